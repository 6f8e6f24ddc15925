//! Monotonic time from the CPU's free-running counter (the TSC on x86-64,
//! the generic timer's virtual count on arm64): read without an exit.

use core::sync::atomic::{AtomicU64, Ordering};

static BOOT_COUNT: AtomicU64 = AtomicU64::new(0);
static COUNTER_HZ: AtomicU64 = AtomicU64::new(1);

pub(crate) fn init(boot_count: u64, counter_hz: u64) {
    BOOT_COUNT.store(boot_count, Ordering::Relaxed);
    COUNTER_HZ.store(counter_hz.max(1), Ordering::Relaxed);
}

/// The raw counter.
#[inline]
pub fn counter() -> u64 {
    crate::platform::counter()
}

pub fn counter_hz() -> u64 {
    COUNTER_HZ.load(Ordering::Relaxed)
}

/// Converts a counter delta to nanoseconds.
pub fn ticks_to_nanos(ticks: u64) -> u64 {
    (ticks as u128 * 1_000_000_000 / counter_hz() as u128) as u64
}

/// Nanoseconds since the first guest instruction.
pub fn now_nanos() -> u64 {
    ticks_to_nanos(counter().saturating_sub(BOOT_COUNT.load(Ordering::Relaxed)))
}

/// Milliseconds since boot as smoltcp wants them.
pub fn now() -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros((now_nanos() / 1000) as i64)
}
