//! Descriptors a monitor inherits from whoever started it (the shim): the
//! kernel opened inside the image, and the pipe on which it says it is ready.

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum InheritError {
    #[error("{option} {fd} is not an open descriptor")]
    NotOpen { option: &'static str, fd: i32 },
    #[error("{option} {fd}: {source}")]
    Flags {
        option: &'static str,
        fd: i32,
        source: nix::Error,
    },
}

/// Takes ownership of an inherited descriptor named by `option`, marking
/// it close-on-exec again.
pub fn adopt_fd(fd: i32, option: &'static str) -> Result<File, InheritError> {
    // Only a descriptor that is open, and not one of the standard three.
    // SAFETY: F_GETFD only reads the descriptor's flags.
    let open = fd > 2 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0;
    if !open {
        return Err(InheritError::NotOpen { option, fd });
    }
    // SAFETY: the descriptor is open, and nothing else in this process
    // owns it: it was inherited for this one purpose (and is adopted once:
    // each option names its own).
    let file = unsafe { File::from_raw_fd(fd) };
    nix::fcntl::fcntl(
        &file,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|source| InheritError::Flags { option, fd, source })?;
    Ok(file)
}

/// The parent's end of `--ready-fd`: told once (`parked`, or `error: WHY`),
/// then closed.
pub struct ReadyFd(File);

impl ReadyFd {
    pub fn adopt(fd: i32) -> Result<ReadyFd, InheritError> {
        adopt_fd(fd, "--ready-fd").map(ReadyFd)
    }

    pub fn report(mut self, line: &str) {
        // The parent may be gone; then nobody is waiting for the line.
        let _ = writeln!(self.0, "{line}");
    }
}
