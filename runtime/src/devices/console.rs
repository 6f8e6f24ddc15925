//! The guest console: bytes straight to a file descriptor (the monitor's
//! stdout, which containerd makes the task's stdout).

use std::os::fd::{AsFd, BorrowedFd, RawFd};

pub struct Console {
    fd: BorrowedFd<'static>,
}

impl Console {
    pub fn stdout() -> Console {
        // SAFETY: fd 1 stays open for the life of the process.
        Console {
            fd: unsafe { BorrowedFd::borrow_raw(1) },
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }

    /// Writes all of `bytes`. A console nobody reads (closed pipe) must not
    /// stop the guest, so write errors only end the write.
    pub fn write(&self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match nix::unistd::write(self.fd.as_fd(), bytes) {
                Ok(0) => return,
                Ok(n) => bytes = &bytes[n..],
                Err(nix::Error::EINTR) => continue,
                Err(err) => {
                    tracing::debug!(%err, "console write failed");
                    return;
                }
            }
        }
    }
}
