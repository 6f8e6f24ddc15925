//! A channel's memory: one memfd holding the control page and the rings'
//! own pages ([`jitsu_vchan::Region`]), mapped shared by both monitors and
//! into both guests. The listener's monitor makes it and seals its size;
//! the connecting one checks size and seals before it maps anything, so a
//! peer can neither hand over too little memory nor shrink it later (which
//! would make our accesses fault).

use std::ffi::CStr;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;

use jitsu_vchan::{ChannelParts, Region, Shared};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum MemoryError {
    #[error("channel memory: {what}: {source}")]
    Sys {
        what: &'static str,
        source: nix::Error,
    },
    #[error("the peer's channel memory is {have} bytes, the channel needs {need}")]
    WrongSize { need: u64, have: u64 },
    #[error("the peer's channel memory is not sealed against shrinking and growing")]
    NotSealed,
    #[error("the channel's ring orders: {0}")]
    Layout(jitsu_vchan::Error),
}

fn sys(what: &'static str) -> impl FnOnce(nix::Error) -> MemoryError {
    move |source| MemoryError::Sys { what, source }
}

/// Seals every channel's memfd carries: its size is fixed for good.
const SEALS: SealFlag = SealFlag::F_SEAL_SHRINK
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_SEAL);

/// A channel's memfd, mapped shared into this process.
#[derive(Debug)]
pub struct ChannelMemory {
    fd: OwnedFd,
    base: NonNull<u8>,
    region: Region,
}

// SAFETY: the mapping is reached only through `Shared` (atomics and raw
// copies, sound from any thread) and unmapped once, on drop.
unsafe impl Send for ChannelMemory {}
// SAFETY: as above: no method hands out a reference into the mapping.
unsafe impl Sync for ChannelMemory {}

impl ChannelMemory {
    /// A fresh, zeroed, sealed memfd for a channel of `region`, mapped.
    pub fn create(region: Region) -> Result<ChannelMemory, MemoryError> {
        const NAME: &CStr = c"jitsu-conduit";
        let fd = memfd_create(NAME, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
            .map_err(sys("memfd_create"))?;
        nix::unistd::ftruncate(&fd, region.len as libc::off_t).map_err(sys("ftruncate"))?;
        fcntl(&fd, FcntlArg::F_ADD_SEALS(SEALS)).map_err(sys("sealing"))?;
        ChannelMemory::map(fd, region)
    }

    /// A memfd a peer handed over for a channel of `region`, once its size
    /// and seals are checked.
    pub fn adopt(fd: OwnedFd, region: Region) -> Result<ChannelMemory, MemoryError> {
        let stat = nix::sys::stat::fstat(&fd).map_err(sys("fstat"))?;
        let have = stat.st_size as u64;
        if stat.st_mode & libc::S_IFMT != libc::S_IFREG || have != region.len as u64 {
            return Err(MemoryError::WrongSize {
                need: region.len as u64,
                have,
            });
        }
        let seals = fcntl(&fd, FcntlArg::F_GET_SEALS).map_err(sys("reading seals"))?;
        let seals = SealFlag::from_bits_truncate(seals);
        if !seals.contains(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW) {
            return Err(MemoryError::NotSealed);
        }
        ChannelMemory::map(fd, region)
    }

    fn map(fd: OwnedFd, region: Region) -> Result<ChannelMemory, MemoryError> {
        let len = std::num::NonZeroUsize::new(region.len)
            .ok_or(MemoryError::WrongSize { need: 1, have: 0 })?;
        // SAFETY: a fresh shared mapping of a sealed memfd of exactly
        // `len` bytes (checked): nothing else in this process aliases it,
        // and its size cannot change under us.
        let base = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd.as_fd(),
                0,
            )
        }
        .map_err(sys("mmap"))?;
        Ok(ChannelMemory {
            fd,
            base: base.cast(),
            region,
        })
    }

    pub fn region(&self) -> Region {
        self.region
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Where the mapping starts in this process (for a KVM memory slot).
    pub fn host_address(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    pub fn len(&self) -> usize {
        self.region.len
    }

    pub fn is_empty(&self) -> bool {
        self.region.len == 0
    }

    /// The whole channel, as memory a peer may write at any moment.
    pub fn shared(&self) -> Shared {
        // SAFETY: the mapping lives as long as `self`, and this crate never
        // makes a Rust reference into it.
        unsafe { Shared::new(self.base.as_ptr(), self.region.len) }.expect("a mapping is not null")
    }

    pub fn parts(&self) -> ChannelParts {
        self.region
            .parts(&self.shared())
            .expect("the mapping holds its region")
    }
}

impl Drop for ChannelMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; every `Shared`
        // handed out is documented to live no longer than `self`.
        let _ = unsafe { munmap(self.base.cast(), self.region.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jitsu_vchan::Endpoint;

    #[test]
    fn two_mappings_of_one_channel_see_each_other() {
        let region = Region::of(10, 13).unwrap();
        let server = ChannelMemory::create(region).unwrap();
        let copy = server.fd().try_clone_to_owned().unwrap();
        let client = ChannelMemory::adopt(copy, region).unwrap();
        let (s, c) = (server.parts(), client.parts());
        Endpoint::lay_out(&s.ctrl, 10, 13).unwrap();
        let mut out = Endpoint::attach(c.ctrl, c.left, c.right).unwrap();
        let mut end = Endpoint::open_server(s.ctrl, s.left, s.right).unwrap();
        let _ = out.write(b"through the memfd").unwrap();
        let mut buf = [0u8; 32];
        let got = end.read(&mut buf).unwrap();
        assert_eq!(&buf[..got.bytes], b"through the memfd");
        assert_ne!(server.host_address(), client.host_address());
    }

    #[test]
    fn memory_of_the_wrong_size_or_unsealed_is_refused() {
        let region = Region::of(10, 11).unwrap();
        let bigger = ChannelMemory::create(Region::of(12, 11).unwrap()).unwrap();
        let refused = ChannelMemory::adopt(bigger.fd().try_clone_to_owned().unwrap(), region);
        assert!(
            matches!(refused, Err(MemoryError::WrongSize { .. })),
            "{refused:?}"
        );
        let plain = memfd_create(c"plain", MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&plain, region.len as libc::off_t).unwrap();
        let refused = ChannelMemory::adopt(plain, region);
        assert!(
            matches!(refused, Err(MemoryError::NotSealed)),
            "{refused:?}"
        );
        let sealed = ChannelMemory::create(region).unwrap();
        let grown = nix::unistd::ftruncate(sealed.fd(), 2 * region.len as libc::off_t);
        assert_eq!(grown, Err(nix::Error::EPERM), "the size is sealed");
    }
}
