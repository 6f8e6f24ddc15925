//! The control socket of a lazy monitor: one command per line (`boot`,
//! `stop`, `status`), one JSON object per line back. The shim and the DNS
//! service use it; so does `jitsu control`.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest command line accepted; a client sending more is disconnected.
const LINE_MAX: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Boot,
    Stop,
    Status,
}

impl Command {
    pub fn parse(line: &str) -> Option<Command> {
        match line.trim() {
            "boot" => Some(Command::Boot),
            "stop" => Some(Command::Stop),
            "status" => Some(Command::Status),
            _ => None,
        }
    }
}

struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
}

pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    clients: Vec<Client>,
}

impl ControlServer {
    pub fn bind(path: &Path) -> std::io::Result<ControlServer> {
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                ErrorKind::AddrInUse,
                format!("{} is in use", path.display()),
            ));
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
            clients: Vec::new(),
        })
    }

    /// The listener first, then each client, as `poll_fds` lists them.
    pub fn poll_fds(&self) -> Vec<BorrowedFd<'_>> {
        std::iter::once(self.listener.as_fd())
            .chain(self.clients.iter().map(|c| c.stream.as_fd()))
            .collect()
    }

    /// Handles readiness (indexes as in `poll_fds`): accepts clients, reads
    /// their lines, and answers each with `answer`.
    pub fn service(&mut self, ready: &[bool], mut answer: impl FnMut(Option<Command>) -> String) {
        if ready.first() == Some(&true) {
            while let Ok((stream, _)) = self.listener.accept() {
                if stream.set_nonblocking(true).is_ok() {
                    self.clients.push(Client {
                        stream,
                        buf: Vec::new(),
                    });
                }
            }
        }
        let mut keep = Vec::with_capacity(self.clients.len());
        for (i, mut client) in std::mem::take(&mut self.clients).into_iter().enumerate() {
            let alive = !ready.get(i + 1).copied().unwrap_or(false)
                || serve_client(&mut client, &mut answer);
            if alive {
                keep.push(client);
            }
        }
        self.clients = keep;
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads what the client sent and answers complete lines. Returns whether
/// the client stays connected.
fn serve_client(client: &mut Client, answer: &mut impl FnMut(Option<Command>) -> String) -> bool {
    let mut chunk = [0u8; 512];
    loop {
        match client.stream.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => client.buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    while let Some(end) = client.buf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = client.buf.drain(..=end).collect();
        let command = std::str::from_utf8(&line).ok().and_then(Command::parse);
        let mut reply = answer(command);
        reply.push('\n');
        // Replies are small; a client that cannot take one is dropped.
        let _ = client.stream.set_nonblocking(false);
        let _ = client
            .stream
            .set_write_timeout(Some(Duration::from_millis(100)));
        if client.stream.write_all(reply.as_bytes()).is_err() {
            return false;
        }
        let _ = client.stream.set_nonblocking(true);
    }
    if client.buf.len() > LINE_MAX {
        let _ = client
            .stream
            .write_all(b"{\"error\":\"command too long\"}\n");
        return false;
    }
    true
}

/// Sends one command to a monitor's control socket and returns its reply.
pub fn request(path: &Path, command: &str) -> std::io::Result<String> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}
