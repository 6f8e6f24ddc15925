//! Memory shared with a peer that may write any byte of it at any moment.
//!
//! Rust references to such memory would promise that it does not change
//! under us, so there are none: indices and flags are read and written as
//! atomics, ring bytes are copied in and out with bounds checked against
//! the region. A peer racing a copy can only change which bytes are
//! copied; every bound is computed from values read once, and checked.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU16, AtomicU32, AtomicU8};

/// A region of shared memory: where it starts and how long it is.
#[derive(Debug, Clone, Copy)]
pub struct Shared {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: a Shared is an address and a length; every access through it is
// atomic or a raw copy, which are sound from any thread (see `new`).
unsafe impl Send for Shared {}

impl Shared {
    /// # Safety
    ///
    /// `base..base + len` must stay mapped, readable and writable for as
    /// long as this value (or any copy or part of it) is used, and nothing
    /// in this process may hold a Rust reference into it meanwhile. The
    /// peer writing it concurrently is expected.
    pub unsafe fn new(base: *mut u8, len: usize) -> Option<Shared> {
        Some(Shared {
            base: NonNull::new(base)?,
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The part `at..at + len`, if it lies inside.
    pub fn part(&self, at: usize, len: usize) -> Option<Shared> {
        let end = at.checked_add(len)?;
        (end <= self.len).then(|| Shared {
            // SAFETY: `at <= len`, so the pointer stays inside the region.
            base: unsafe { NonNull::new_unchecked(self.base.as_ptr().add(at)) },
            len,
        })
    }

    /// The byte at `at`, as an atomic.
    pub fn u8_at(&self, at: usize) -> &AtomicU8 {
        assert!(at < self.len, "offset {at} outside {} bytes", self.len);
        // SAFETY: in bounds (checked); AtomicU8 has no alignment need; the
        // memory is valid for the region's life (`new`'s contract).
        unsafe { AtomicU8::from_ptr(self.base.as_ptr().add(at)) }
    }

    /// The aligned u16 at `at`, as an atomic.
    pub fn u16_at(&self, at: usize) -> &AtomicU16 {
        let ptr = self.aligned(at, 2);
        // SAFETY: in bounds and aligned (`aligned` checks both).
        unsafe { AtomicU16::from_ptr(ptr.cast()) }
    }

    /// The aligned u32 at `at`, as an atomic.
    pub fn u32_at(&self, at: usize) -> &AtomicU32 {
        let ptr = self.aligned(at, 4);
        // SAFETY: in bounds and aligned (`aligned` checks both).
        unsafe { AtomicU32::from_ptr(ptr.cast()) }
    }

    fn aligned(&self, at: usize, size: usize) -> *mut u8 {
        assert!(
            at.checked_add(size).is_some_and(|end| end <= self.len),
            "offset {at} outside {} bytes",
            self.len
        );
        // SAFETY: in bounds (checked above).
        let ptr = unsafe { self.base.as_ptr().add(at) };
        assert_eq!(
            ptr as usize % size,
            0,
            "offset {at} is not aligned to {size}"
        );
        ptr
    }

    /// Copies `dst.len()` bytes from offset `at` out of the region.
    pub fn copy_out(&self, at: usize, dst: &mut [u8]) {
        assert!(
            self.part(at, dst.len()).is_some(),
            "copy outside the region"
        );
        // SAFETY: the source range is inside the region (checked), the
        // destination is our own buffer, and the two cannot overlap (no
        // reference into the region exists).
        unsafe {
            core::ptr::copy_nonoverlapping(self.base.as_ptr().add(at), dst.as_mut_ptr(), dst.len())
        }
    }

    /// Copies `src` into the region at offset `at`.
    pub fn copy_in(&self, at: usize, src: &[u8]) {
        assert!(
            self.part(at, src.len()).is_some(),
            "copy outside the region"
        );
        // SAFETY: as in `copy_out`, the other way.
        unsafe {
            core::ptr::copy_nonoverlapping(src.as_ptr(), self.base.as_ptr().add(at), src.len())
        }
    }

    /// Sets every byte of the region to zero.
    pub fn zero(&self) {
        // SAFETY: the whole region, valid by `new`'s contract.
        unsafe { core::ptr::write_bytes(self.base.as_ptr(), 0, self.len) }
    }
}
