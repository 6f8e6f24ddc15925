//! Page-sized, page-aligned frames in the image that Xen puts its own pages
//! over (shared info, grant table frames).

use core::cell::UnsafeCell;

#[repr(C, align(4096))]
pub struct Frame(UnsafeCell<[u8; 4096]>);

// SAFETY: the guest has one vCPU and no interrupt handlers, so nothing runs
// concurrently with the code that touches a frame.
unsafe impl Sync for Frame {}

impl Frame {
    pub const fn new() -> Frame {
        Frame(UnsafeCell::new([0; 4096]))
    }

    pub fn addr(&self) -> u64 {
        self.0.get() as u64
    }

    /// The guest frame number, as Xen's memory calls want it (identity map).
    pub fn gfn(&self) -> u64 {
        self.addr() >> 12
    }
}
