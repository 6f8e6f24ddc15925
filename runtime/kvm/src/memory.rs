//! Guest memory: one anonymous mapping, guest-physical address 0 at its
//! start, in which the image's read-only segments may be mapped from the
//! kernel file instead (so every VM of an image shares them with the page
//! cache, and they cost a VM nothing of its own).
//!
//! Soundness rests on one rule: the monitor touches guest memory only while
//! the (single) vCPU is not running guest code, that is before the first
//! `KVM_RUN` and during exits, on the thread that owns the vCPU. The guest
//! never runs concurrently with a borrowed slice, so handing out ordinary
//! `&[u8]` / `&mut [u8]` views is sound.

use std::ptr::NonNull;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum MemoryError {
    #[error("cannot map {size} bytes of guest memory: {source}")]
    Map { size: u64, source: nix::Error },
    #[error("guest range {gpa:#x}+{len:#x} lies outside guest memory ({size:#x} bytes)")]
    OutOfRange { gpa: u64, len: u64, size: u64 },
    #[error("cannot map the kernel file at {gpa:#x}: {source}")]
    MapFile { gpa: u64, source: nix::Error },
}

pub struct GuestMemory {
    base: NonNull<u8>,
    size: usize,
}

// SAFETY: the mapping is owned by this value alone; moving it to the vCPU
// thread moves the only access path with it.
unsafe impl Send for GuestMemory {}

impl GuestMemory {
    /// Maps `size` bytes of zeroed memory. Pages are only backed when touched,
    /// so a large guest costs what it uses.
    pub fn new(size: u64) -> Result<GuestMemory, MemoryError> {
        let len = std::num::NonZeroUsize::new(size as usize).ok_or(MemoryError::Map {
            size,
            source: nix::Error::EINVAL,
        })?;
        use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
        // SAFETY: a fresh anonymous private mapping aliases nothing.
        let base = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )
        }
        .map_err(|source| MemoryError::Map { size, source })?;
        Ok(GuestMemory {
            base: base.cast(),
            size: size as usize,
        })
    }

    pub fn size(&self) -> u64 {
        self.size as u64
    }

    /// Maps `len` bytes of `file` from `offset` read-only over guest pages
    /// from `gpa` (both page-aligned, `len` rounded up to a page): the guest
    /// reads the page cache's pages, shared with every other mapping of the
    /// file. Only for what neither the guest nor the monitor ever writes.
    pub fn map_file(
        &mut self,
        gpa: u64,
        len: u64,
        file: std::os::fd::BorrowedFd<'_>,
        offset: u64,
    ) -> Result<(), MemoryError> {
        use nix::sys::mman::{mmap, MapFlags, ProtFlags};
        let page = jitsu_abi::layout::PAGE_SIZE;
        let len = len.next_multiple_of(page);
        let start = self.check(gpa, len)?;
        let bad = |source| MemoryError::MapFile { gpa, source };
        if gpa % page != 0 || offset % page != 0 {
            return Err(bad(nix::Error::EINVAL));
        }
        let length = std::num::NonZeroUsize::new(len as usize).ok_or(bad(nix::Error::EINVAL))?;
        let address = std::num::NonZeroUsize::new(self.base.as_ptr() as usize + start);
        // SAFETY: the range lies inside our own guest mapping (checked), so
        // MAP_FIXED replaces only pages of ours; no slice of them is alive
        // (we hold `&mut self`), and they are mapped read-only.
        unsafe {
            mmap(
                address,
                length,
                ProtFlags::PROT_READ,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_FIXED,
                file,
                offset as libc::off_t,
            )
        }
        .map_err(bad)?;
        Ok(())
    }

    /// Host address of guest-physical 0, for KVM_SET_USER_MEMORY_REGION.
    pub fn host_address(&self) -> u64 {
        self.base.as_ptr() as u64
    }

    fn check(&self, gpa: u64, len: u64) -> Result<usize, MemoryError> {
        match gpa.checked_add(len) {
            Some(end) if end <= self.size as u64 => Ok(gpa as usize),
            _ => Err(MemoryError::OutOfRange {
                gpa,
                len,
                size: self.size as u64,
            }),
        }
    }

    pub fn slice(&self, gpa: u64, len: u64) -> Result<&[u8], MemoryError> {
        let start = self.check(gpa, len)?;
        // SAFETY: in bounds (checked), and see the module comment on aliasing.
        Ok(unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(start), len as usize) })
    }

    pub fn slice_mut(&mut self, gpa: u64, len: u64) -> Result<&mut [u8], MemoryError> {
        let start = self.check(gpa, len)?;
        // SAFETY: in bounds (checked); `&mut self` makes the view unique.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(start), len as usize) })
    }

    /// Reads a plain-data ABI structure.
    pub fn read<T: Plain>(&self, gpa: u64) -> Result<T, MemoryError> {
        let bytes = self.slice(gpa, size_of::<T>() as u64)?;
        // SAFETY: `T: Plain` is valid for any bit pattern; the read is unaligned-safe.
        Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
    }

    pub fn write<T: Plain>(&mut self, gpa: u64, value: &T) -> Result<(), MemoryError> {
        let bytes = self.slice_mut(gpa, size_of::<T>() as u64)?;
        // SAFETY: in bounds; unaligned-safe write of plain data.
        unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast::<T>(), *value) };
        Ok(())
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no view outlives
        // `self` because every view borrows it.
        let _ = unsafe { nix::sys::mman::munmap(self.base.cast(), self.size) };
    }
}

/// ABI structures: `#[repr(C)]`, integers and byte arrays only, so any bit
/// pattern is a valid value.
///
/// # Safety
/// Implement only for types with no padding-sensitive invariants, no
/// references and no niches.
pub unsafe trait Plain: Copy {}

// SAFETY: all of these are #[repr(C)] structs of integers and byte arrays.
unsafe impl Plain for jitsu_abi::BootInfo {}
unsafe impl Plain for jitsu_abi::Walltime {}
unsafe impl Plain for jitsu_abi::ConsoleWrite {}
unsafe impl Plain for jitsu_abi::Poll {}
unsafe impl Plain for jitsu_abi::NetIo {}
unsafe impl Plain for jitsu_abi::Halt {}
unsafe impl Plain for jitsu_abi::ConduitListen {}
unsafe impl Plain for jitsu_abi::ConduitConnect {}
unsafe impl Plain for jitsu_abi::ConduitEvents {}
unsafe impl Plain for jitsu_abi::ConduitEvent {}
unsafe impl Plain for jitsu_abi::ConduitClose {}
unsafe impl Plain for jitsu_abi::SignalPoll {}
unsafe impl Plain for u64 {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked() {
        let mut mem = GuestMemory::new(2 << 20).unwrap();
        assert!(mem.slice(0, 2 << 20).is_ok());
        assert!(mem.slice((2 << 20) - 1, 2).is_err());
        assert!(mem.slice(u64::MAX, 2).is_err());
        mem.write(0x1000, &0xdead_beef_u64).unwrap();
        assert_eq!(mem.read::<u64>(0x1000).unwrap(), 0xdead_beef);
        assert!(mem.write((2 << 20) - 4, &1u64).is_err());
    }
}
