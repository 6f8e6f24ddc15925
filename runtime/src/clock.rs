//! One monotonic time line for the whole monitor, in nanoseconds since the
//! process first asked, so that threads can share instants through atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn origin() -> &'static (Instant, SystemTime) {
    static ORIGIN: OnceLock<(Instant, SystemTime)> = OnceLock::new();
    ORIGIN.get_or_init(|| (Instant::now(), SystemTime::now()))
}

/// Nanoseconds since the origin; never 0 (0 means "not yet" in atomics).
pub fn now_ns() -> u64 {
    origin().0.elapsed().as_nanos() as u64 + 1
}

/// The instant of a `now_ns` reading.
pub fn to_instant(ns: u64) -> Instant {
    origin().0 + Duration::from_nanos(ns.saturating_sub(1))
}

pub fn instant_ns(at: Instant) -> u64 {
    at.saturating_duration_since(origin().0).as_nanos() as u64 + 1
}

/// Milliseconds since the Unix epoch of a `now_ns` reading.
pub fn unix_ms(ns: u64) -> u64 {
    let wall = origin().1 + Duration::from_nanos(ns.saturating_sub(1));
    wall.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// When a guest was asked to boot and when its first instruction ran, shared
/// between the supervisor and the vCPU thread.
#[derive(Debug, Default)]
pub struct BootClock {
    /// Guest TSC and host time read together while the VM was parked.
    pub tsc_before: AtomicU64,
    pub tsc_before_ns: AtomicU64,
    pub trigger_ns: AtomicU64,
    pub first_instruction_ns: AtomicU64,
}

impl BootClock {
    /// Trigger to first guest instruction, once both are known.
    pub fn latency(&self) -> Option<Duration> {
        let trigger = self.trigger_ns.load(Ordering::Acquire);
        let first = self.first_instruction_ns.load(Ordering::Acquire);
        (trigger != 0 && first != 0).then(|| Duration::from_nanos(first.saturating_sub(trigger)))
    }

    /// Records the first instruction from the guest's entry TSC.
    pub fn record_entry(&self, entry_tsc: u64, tsc_khz: u32) {
        let before = self.tsc_before.load(Ordering::Acquire);
        let Some(ticks) = entry_tsc.checked_sub(before) else {
            return;
        };
        if tsc_khz == 0 {
            return;
        }
        let nanos = (ticks as u128 * 1_000_000 / tsc_khz as u128) as u64;
        // A guest can write anything there; ignore what no real boot produces.
        if nanos < 60_000_000_000 {
            let at = self.tsc_before_ns.load(Ordering::Acquire) + nanos;
            self.first_instruction_ns.store(at, Ordering::Release);
        }
    }
}
