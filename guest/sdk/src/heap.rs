//! A bump heap for buffers that live as long as the unikernel: socket
//! buffers, packet batches. Nothing is ever freed, so there is no allocator
//! state to corrupt; the region runs from the end of the image to the stack
//! (or, where the stack lives in the image, to the end of memory).

use core::mem::{align_of, size_of};
use core::sync::atomic::{AtomicU64, Ordering};

static NEXT: AtomicU64 = AtomicU64::new(0);
static END: AtomicU64 = AtomicU64::new(0);

/// Hands out `[start, end)`, which the platform has mapped read-write.
pub(crate) fn init(start: u64, end: u64) {
    NEXT.store(start, Ordering::Relaxed);
    END.store(end, Ordering::Relaxed);
}

/// Bytes still free on the heap.
pub fn remaining() -> u64 {
    END.load(Ordering::Relaxed)
        .saturating_sub(NEXT.load(Ordering::Relaxed))
}

/// Reserves `len` bytes aligned to `align`; the memory is zero (guest memory
/// starts zeroed and is never handed out twice).
fn reserve(len: u64, align: u64) -> Option<u64> {
    let mut start = 0;
    NEXT.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
        start = next.checked_add(align - 1)? & !(align - 1);
        let end = start.checked_add(len)?;
        (end <= END.load(Ordering::Relaxed)).then_some(end)
    })
    .ok()?;
    Some(start)
}

/// A zeroed byte buffer that lives forever, or `None` when the heap is full.
pub fn bytes(len: usize) -> Option<&'static mut [u8]> {
    let start = reserve(len as u64, 16)?;
    // SAFETY: [start, start + len) lies inside the region the platform gave
    // `init`, which is guest memory mapped read-write that nothing else uses,
    // and was reserved for this call alone, so no other reference to it exists.
    Some(unsafe { core::slice::from_raw_parts_mut(start as *mut u8, len) })
}

/// `count` zeroed, page-aligned pages that live forever (for memory shared
/// with a hypervisor or another domain), or `None` when the heap is full.
pub fn pages(count: usize) -> Option<&'static mut [u8]> {
    let len = count.checked_mul(4096)?;
    let start = reserve(len as u64, 4096)?;
    // SAFETY: as in `bytes`.
    Some(unsafe { core::slice::from_raw_parts_mut(start as *mut u8, len) })
}

/// An array of `n` values made by `init`, living forever.
pub fn array<T>(n: usize, mut init: impl FnMut(usize) -> T) -> Option<&'static mut [T]> {
    let len = size_of::<T>().checked_mul(n)?;
    let start = reserve(len as u64, align_of::<T>().max(1) as u64)? as *mut T;
    for i in 0..n {
        // SAFETY: the slot is inside the region reserved above for this call
        // and suitably aligned; it holds no value yet, so `write` drops nothing.
        unsafe { start.add(i).write(init(i)) };
    }
    // SAFETY: all `n` elements were initialised just above.
    Some(unsafe { core::slice::from_raw_parts_mut(start, n) })
}
