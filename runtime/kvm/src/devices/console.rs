//! The guest console: bytes to the monitor's stdout (which containerd makes
//! the task's stdout), never waited for.
//!
//! Nobody may be reading that stdout: containerd restarting, a slow log
//! reader, `ctr run -d` with nothing attached. A blocking write would then
//! stall the vCPU thread inside a hypercall, and with it idle re-park,
//! `control stop` and SIGTERM. So every write is non-blocking; what the
//! reader's pipe cannot take now is dropped and counted.
//!
//! Non-blocking without touching anyone else: `O_NONBLOCK` belongs to the
//! open file description, which fd 1 shares with the parent (a shell's
//! terminal, the shim's FIFO). A pipe, FIFO or terminal is therefore opened
//! again through `/proc/self/fd/1`, which gives a description of our own; a
//! socket is written with `MSG_DONTWAIT`; a regular file never blocks and is
//! used as it is (reopening it would lose its offset).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::socket::{send, MsgFlags};
use nix::sys::stat::{fstat, Mode, SFlag};

pub struct Console {
    sink: Sink,
    dropped: AtomicU64,
}

enum Sink {
    /// Our own non-blocking description of stdout.
    Reopened(OwnedFd),
    Socket(BorrowedFd<'static>),
    /// A regular file or a device that does not block.
    AsIs(BorrowedFd<'static>),
}

impl Console {
    /// The process's one console, set up at first use.
    pub fn stdout() -> &'static Console {
        static CONSOLE: OnceLock<Console> = OnceLock::new();
        CONSOLE.get_or_init(|| Console {
            sink: Sink::for_stdout(),
            dropped: AtomicU64::new(0),
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd().as_raw_fd()
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match &self.sink {
            Sink::Reopened(fd) => fd.as_fd(),
            Sink::Socket(fd) | Sink::AsIs(fd) => *fd,
        }
    }

    /// Whether writes go through `send` (the seccomp filter must allow it).
    pub fn is_socket(&self) -> bool {
        matches!(self.sink, Sink::Socket(_))
    }

    /// Bytes the guest wrote that nobody could take, over the monitor's life.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes what the reader can take now and drops the rest.
    pub fn write(&self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let written = match &self.sink {
                Sink::Socket(fd) => send(
                    fd.as_raw_fd(),
                    bytes,
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                ),
                _ => nix::unistd::write(self.fd(), bytes),
            };
            match written {
                Ok(n) if n > 0 => bytes = &bytes[n..],
                Err(Errno::EINTR) => continue,
                Ok(_) | Err(_) => break,
            }
        }
        if !bytes.is_empty() {
            self.dropped
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
    }
}

impl Sink {
    fn for_stdout() -> Sink {
        // SAFETY: fd 1 stays open for the life of the process.
        let stdout = unsafe { BorrowedFd::borrow_raw(libc::STDOUT_FILENO) };
        let Ok(stat) = fstat(stdout) else {
            return Sink::AsIs(stdout);
        };
        let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        // Read-write for a FIFO: opening it write-only without a reader
        // would fail (ENXIO), and read-write never waits for one.
        let flags = match kind {
            SFlag::S_IFIFO => OFlag::O_RDWR,
            SFlag::S_IFCHR => OFlag::O_WRONLY | OFlag::O_NOCTTY,
            SFlag::S_IFSOCK => return Sink::Socket(stdout),
            _ => return Sink::AsIs(stdout),
        };
        let reopened = open(
            "/proc/self/fd/1",
            flags | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        );
        match reopened {
            Ok(fd) => Sink::Reopened(fd),
            Err(err) => {
                tracing::warn!(%err, "cannot reopen stdout non-blocking; console writes may block");
                Sink::AsIs(stdout)
            }
        }
    }
}
