//! One monotonic time line for the whole monitor, in nanoseconds since the
//! process first asked, so that threads can share instants through atomics.

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
