//! A lazy monitor (`jitsu run --lazy`) for hello-http in a private
//! namespace, with its control socket.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::netns::NetNs;
use crate::process::Guarded;
use crate::{guest, jitsu_bin};

pub struct LazyHello {
    pub ns: NetNs,
    pub monitor: Guarded,
    pub control: PathBuf,
    _dir: tempfile::TempDir,
}

impl LazyHello {
    /// Starts a parked hello-http; `extra` goes to `jitsu run` (e.g. an idle timeout).
    pub fn start(extra: &[&str]) -> LazyHello {
        LazyHello::start_kernel(&guest("hello-http"), &[], extra, Stdio::piped())
    }

    /// Starts a parked `kernel` (with `guest_args` on its command line),
    /// its console on `stdout`.
    pub fn start_kernel(
        kernel: &std::path::Path,
        guest_args: &[&str],
        extra: &[&str],
        stdout: Stdio,
    ) -> LazyHello {
        let ns = NetNs::with_tap();
        let dir = tempfile::tempdir().expect("temp dir");
        let control = dir.path().join("control.sock");
        let mut cmd = ns.command(jitsu_bin());
        cmd.args(["run", "--lazy", "--control"])
            .arg(&control)
            .args(extra)
            .args(ns.jitsu_net_args())
            .arg(kernel)
            .arg("--")
            .args(guest_args)
            .stdout(stdout);
        let monitor = Guarded::spawn(&mut cmd);
        let server = LazyHello {
            ns,
            monitor,
            control,
            _dir: dir,
        };
        server.wait_until(|s| s["state"] == "parked", Duration::from_secs(10));
        server
    }

    pub fn status(&self) -> serde_json::Value {
        let reply = jitsu_runtime_request(&self.control, "status");
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("status {reply:?}: {e}"))
    }

    pub fn command(&self, command: &str) -> serde_json::Value {
        let reply = jitsu_runtime_request(&self.control, command);
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{command} {reply:?}: {e}"))
    }

    /// Polls the status until `pred` holds.
    pub fn wait_until(
        &self,
        pred: impl Fn(&serde_json::Value) -> bool,
        timeout: Duration,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if self.control.exists() {
                if let Ok(reply) = try_request(&self.control, "status") {
                    if let Ok(status) = serde_json::from_str::<serde_json::Value>(&reply) {
                        if pred(&status) {
                            return status;
                        }
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "condition not reached within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// One command to a lazy monitor's control socket, one line back.
pub fn try_request(path: &std::path::Path, command: &str) -> std::io::Result<String> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}

fn jitsu_runtime_request(path: &std::path::Path, command: &str) -> String {
    try_request(path, command).unwrap_or_else(|e| panic!("control {command}: {e}"))
}
