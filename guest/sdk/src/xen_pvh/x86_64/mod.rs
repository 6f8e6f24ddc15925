//! x86-64 PVH: long mode set up by our own entry code, hypercalls through
//! the page Xen fills, time from the TSC scaled by Xen's time info.

pub(super) mod hypercall;
mod start;
pub(super) mod time;

/// The TSC, which Xen's time info scales to system time.
#[inline]
pub(crate) fn counter() -> u64 {
    // SAFETY: rdtsc reads a counter; the domain's CR4.TSD is clear.
    unsafe { core::arch::x86_64::_rdtsc() }
}
