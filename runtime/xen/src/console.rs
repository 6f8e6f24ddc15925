//! A lazy domain's console, relayed to stdout by a thread of its own: the
//! supervisor's loop never reads it, and a guest whose console nobody reads
//! would stall on a full ring. What stdout cannot take at once (a reader
//! that stopped reading) is dropped and counted, never waited for: a stop,
//! an idle re-park or a signal must not hang on it.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

/// How long a draining relay waits for more output before it ends.
const QUIET: Duration = Duration::from_millis(200);

pub struct ConsoleRelay {
    stop: Arc<Stop>,
    thread: Option<JoinHandle<()>>,
}

/// How the relay is told to end: `drain` says how, `wake` wakes it.
struct Stop {
    wake: EventFd,
    drain: AtomicBool,
}

/// How a relay ends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// At once (the domain is stopped: what it was still printing is moot).
    Now,
    /// Once the console has been quiet a moment (the guest ended by itself:
    /// its last lines matter).
    Drain,
}

impl ConsoleRelay {
    /// Relays `pty` (raw, non-blocking) until told to finish or closed;
    /// bytes stdout could not take are added to `dropped`.
    pub fn start(pty: OwnedFd, dropped: Arc<AtomicU64>) -> std::io::Result<ConsoleRelay> {
        let stop = Arc::new(Stop {
            wake: EventFd::from_flags(EfdFlags::EFD_CLOEXEC)?,
            drain: AtomicBool::new(false),
        });
        let told = stop.clone();
        let thread = std::thread::Builder::new()
            .name("xen-console".into())
            .spawn(move || relay(pty, &told, &dropped))?;
        Ok(ConsoleRelay {
            stop,
            thread: Some(thread),
        })
    }

    pub fn finish(mut self, how: Finish) {
        self.end(how);
    }

    fn end(&mut self, how: Finish) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop
            .drain
            .store(how == Finish::Drain, Ordering::Relaxed);
        let _ = self.stop.wake.write(1);
        let _ = thread.join();
    }
}

impl Drop for ConsoleRelay {
    fn drop(&mut self) {
        self.end(Finish::Now);
    }
}

fn relay(pty: OwnedFd, stop: &Stop, dropped: &AtomicU64) {
    let mut draining = false;
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [
            PollFd::new(pty.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.wake.as_fd(), PollFlags::POLLIN),
        ];
        let timeout = if draining {
            PollTimeout::from(QUIET.as_millis() as u16)
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(0) => return, // quiet while draining
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(_) => return,
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            let _ = stop.wake.read();
            if !stop.drain.load(Ordering::Relaxed) {
                return;
            }
            draining = true;
        }
        if fds[0].revents().is_none_or(|r| r.is_empty()) {
            continue;
        }
        match nix::unistd::read(&pty, &mut buf) {
            Ok(0) => return,
            Ok(n) => write_or_drop(&buf[..n], dropped),
            Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => {}
            // EIO: xenconsoled closed its end (the domain is gone).
            Err(_) => return,
        }
    }
}

/// Writes to stdout (unbuffered: a buffer's flush could block) only what
/// it can take now.
fn write_or_drop(bytes: &[u8], dropped: &AtomicU64) {
    let stdout = std::io::stdout();
    let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLOUT)];
    // POLLOUT on a pipe means room for PIPE_BUF (4096) bytes: a write of at
    // most that much does not block.
    let writable = poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0);
    let written = if writable {
        nix::unistd::write(&stdout, bytes).unwrap_or(0)
    } else {
        0
    };
    dropped.fetch_add((bytes.len() - written) as u64, Ordering::Relaxed);
}
