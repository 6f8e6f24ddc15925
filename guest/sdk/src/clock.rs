//! Monotonic time from the TSC: `rdtsc` works at CPL 3 and costs no exit.

use core::sync::atomic::{AtomicU64, Ordering};

static BOOT_TSC: AtomicU64 = AtomicU64::new(0);
static TSC_HZ: AtomicU64 = AtomicU64::new(1);

pub(crate) fn init(boot_tsc: u64, tsc_hz: u64) {
    BOOT_TSC.store(boot_tsc, Ordering::Relaxed);
    TSC_HZ.store(tsc_hz.max(1), Ordering::Relaxed);
}

/// The raw time stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc reads a counter; CR4.TSD is clear so it is allowed at CPL 3.
    unsafe { core::arch::x86_64::_rdtsc() }
}

pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Converts a TSC delta to nanoseconds.
pub fn ticks_to_nanos(ticks: u64) -> u64 {
    (ticks as u128 * 1_000_000_000 / tsc_hz() as u128) as u64
}

/// Nanoseconds since the first guest instruction.
pub fn now_nanos() -> u64 {
    ticks_to_nanos(rdtsc().saturating_sub(BOOT_TSC.load(Ordering::Relaxed)))
}

/// Milliseconds since boot as smoltcp wants them.
pub fn now() -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros((now_nanos() / 1000) as i64)
}
