//! The unikernel ELF as a monitor keeps it between parkings: an open file,
//! mapped only while a VM is being built. Its bytes are then the page
//! cache's, shared by every monitor of the same image, instead of a private
//! copy in each monitor's heap.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::ptr::NonNull;

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum KernelFileError {
    #[error("cannot open it: {0}")]
    Open(std::io::Error),
    #[error("it is not a regular file")]
    NotRegular,
    #[error("it is empty")]
    Empty,
    #[error("it is {0} bytes, more than the largest guest ({max} bytes)", max = jitsu_abi::layout::MEM_MAX)]
    TooBig(u64),
    #[error("cannot map it: {0}")]
    Map(nix::Error),
}

pub struct KernelFile {
    file: File,
    len: usize,
}

impl KernelFile {
    /// Opens `path`: a regular file no larger than the largest guest. A
    /// FIFO is refused rather than waited on (opened non-blocking).
    pub fn open(path: &Path) -> Result<KernelFile, KernelFileError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(KernelFileError::Open)?;
        KernelFile::from_file(file)
    }

    /// A kernel already open (handed over by the shim, which resolved it
    /// inside the image): checked like one opened here.
    pub fn from_file(file: File) -> Result<KernelFile, KernelFileError> {
        let meta = file.metadata().map_err(KernelFileError::Open)?;
        if !meta.is_file() {
            return Err(KernelFileError::NotRegular);
        }
        match meta.len() {
            0 => Err(KernelFileError::Empty),
            n if n > jitsu_abi::layout::MEM_MAX => Err(KernelFileError::TooBig(n)),
            n => Ok(KernelFile {
                file,
                len: n as usize,
            }),
        }
    }

    /// The file's bytes, read-only, until the mapping is dropped.
    pub fn map(&self) -> Result<Mapping<'_>, KernelFileError> {
        let len = std::num::NonZeroUsize::new(self.len).ok_or(KernelFileError::Empty)?;
        // SAFETY: a fresh private read-only mapping of our own open file;
        // nothing else in this process aliases it.
        let ptr = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ,
                MapFlags::MAP_PRIVATE,
                self.file.as_fd(),
                0,
            )
        }
        .map_err(KernelFileError::Map)?;
        Ok(Mapping {
            ptr: ptr.cast(),
            len: self.len,
            file: self.file.as_fd(),
        })
    }
}

/// A read-only view of a kernel file.
pub struct Mapping<'a> {
    ptr: NonNull<u8>,
    len: usize,
    file: std::os::fd::BorrowedFd<'a>,
}

impl Mapping<'_> {
    /// The file itself, to map parts of it into a guest.
    pub fn file(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file
    }
}

impl std::ops::Deref for Mapping<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes until `drop` unmaps them,
        // and the mapping is never written.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping<'_> {
    fn drop(&mut self) {
        // SAFETY: the region is the one `map` made, and no slice of it
        // outlives `self` (they borrow it).
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}
