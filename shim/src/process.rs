//! A child of the shim (a monitor, a pod's pause process) known well enough
//! to signal it safely later, even from another shim process after a crash.
//!
//! A pid alone is not enough: once the process is reaped the number can be
//! given to anyone. So the record keeps the pid with the process's start
//! time (field 22 of `/proc/<pid>/stat`), and a signal goes through a pidfd
//! opened first and checked against that start time: the pidfd pins one
//! process, the start time proves it is ours, and a process that ends in
//! between makes the signal fail with ESRCH rather than reach a stranger.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    /// Clock ticks since boot at which it started.
    pub start_time: u64,
}

impl Process {
    /// The child `pid` just spawned; `None` if it is already gone (and so
    /// never to be signalled).
    pub fn spawned(pid: u32) -> Option<Process> {
        Some(Process {
            pid,
            start_time: start_time(pid)?,
        })
    }

    /// Sends `signal` if this process still runs. Returns whether it did.
    pub fn signal(&self, signal: Signal) -> std::io::Result<bool> {
        self.send(signal as libc::c_int)
    }

    /// `signo` 0 sends nothing and only asks whether the process is there.
    fn send(&self, signo: libc::c_int) -> std::io::Result<bool> {
        let Some(pidfd) = pidfd_open(self.pid)? else {
            return Ok(false);
        };
        if start_time(self.pid) != Some(self.start_time) {
            return Ok(false); // the pid is someone else's now
        }
        // SAFETY: pidfd_send_signal reads only its integer arguments; the
        // siginfo pointer may be null.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                signo,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        match rc {
            0 => Ok(true),
            _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) => Ok(false),
            _ => Err(std::io::Error::last_os_error()),
        }
    }
}

/// A pidfd for `pid`, or `None` if no such process exists.
fn pidfd_open(pid: u32) -> std::io::Result<Option<OwnedFd>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ESRCH) => Ok(None),
            _ => Err(err),
        };
    }
    // SAFETY: the kernel just gave us this descriptor; nothing else owns it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }))
}

/// Field 22 of `/proc/<pid>/stat`, counted after the parenthesised name
/// (which may itself hold spaces and parentheses).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(") ")?;
    // After the name: state is field 3, so start time is the 20th here.
    after_name.split_ascii_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_start_time_is_read_after_any_name() {
        let tail = "S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 424242 19 20";
        assert_eq!(
            parse_start_time(&format!("77 (jitsu) {tail}")),
            Some(424242)
        );
        assert_eq!(
            parse_start_time(&format!("77 (a) b (c) {tail}")),
            Some(424242),
            "a name with spaces and parentheses"
        );
        assert_eq!(parse_start_time("77 (jitsu) S 1 2"), None);
    }

    #[test]
    fn our_own_process_is_signalled_a_stranger_is_not() {
        let me = Process::spawned(std::process::id()).expect("we run");
        assert!(me.send(0).unwrap());
        let impostor = Process {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!impostor.send(0).unwrap(), "same pid, other start time");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = Process::spawned(child.id()).unwrap();
        child.wait().unwrap();
        assert!(!gone.send(0).unwrap(), "reaped");
    }

    proptest! {
        #[test]
        fn arbitrary_stat_text_never_panics(text in "\\PC{0,200}") {
            let _ = parse_start_time(&text);
        }
    }
}
