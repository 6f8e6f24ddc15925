//! Child processes that cannot outlive the test that started them.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Kills and reaps the child on drop.
pub struct Guarded {
    child: Option<Child>,
}

impl Guarded {
    pub fn spawn(cmd: &mut Command) -> Guarded {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Guarded { child: Some(child) }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Whether the child has not exited.
    pub fn child_alive(&self) -> bool {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        matches!(
            nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)),
            Ok(nix::sys::wait::WaitStatus::StillAlive)
        )
    }

    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("running")
    }

    /// Reads stdout until `needle` appears (or the deadline passes); returns
    /// what was read.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let stdout = self.child().stdout.as_mut().expect("stdout piped");
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while Instant::now() < deadline {
            match stdout.read(&mut byte) {
                Ok(0) => break,
                Ok(_) => {
                    seen.push(byte[0]);
                    if String::from_utf8_lossy(&seen).contains(needle) {
                        return String::from_utf8_lossy(&seen).into_owned();
                    }
                }
                Err(e) => panic!("reading child stdout: {e}"),
            }
        }
        panic!(
            "{needle:?} did not appear; output so far: {}",
            String::from_utf8_lossy(&seen)
        );
    }

    /// Waits for the child to exit on its own.
    pub fn wait_timeout(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child().try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "child did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a command to completion with a time limit, capturing its output
/// (read while it runs, so a chatty child cannot fill a pipe and hang).
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut guarded = Guarded::spawn(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        guarded
            .child()
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        guarded
            .child()
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let status = guarded.wait_timeout(timeout);
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Each thread of `pid`: name, state, where it sleeps in the kernel and its
/// CPU ticks (user, system), for the message of a test that timed out.
pub fn threads(pid: u32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("{pid} is gone");
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let read = |f: &str| std::fs::read_to_string(task.path().join(f)).unwrap_or_default();
        let stat = read("stat");
        // Fields after the parenthesised name: state is the 1st, utime the 12th, stime the 13th.
        let after = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |i: usize| fields.get(i).copied().unwrap_or("?");
        out.push(format!(
            "{} {} wchan={} utime={} stime={}",
            read("comm").trim(),
            field(0),
            read("wchan").trim(),
            field(11),
            field(12)
        ));
    }
    out.join("; ")
}
