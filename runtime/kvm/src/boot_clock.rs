//! When a guest was asked to boot and when its first instruction ran,
//! shared between the supervisor and the vCPU thread, on the monitor's one
//! time line (`jitsu_runtime::clock`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The instants of one boot, in `clock::now_ns` units.
#[derive(Debug, Default)]
pub struct BootClock {
    /// Guest TSC and host time read together while the VM was parked.
    pub counter_before: AtomicU64,
    pub counter_before_ns: AtomicU64,
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

    /// Records the first instruction from the guest's entry TSC, read at the
    /// guest's first exit (`exit_ns`). The TSC reading is only trusted when
    /// it lands between the trigger and that exit: a guest can write anything
    /// there, and where the host's TSC is unstable KVM rewinds the guest's TSC
    /// when the vCPU is loaded. Otherwise the exit itself, an upper bound, is
    /// the best estimate, so a boot is always seen to finish.
    pub fn record_entry(&self, entry_counter: u64, counter_khz: u32, exit_ns: u64) {
        let at = self
            .instant_of_tsc(entry_counter, counter_khz)
            .filter(|&at| {
                let trigger = self.trigger_ns.load(Ordering::Acquire);
                trigger <= at && at <= exit_ns
            });
        self.first_instruction_ns
            .store(at.unwrap_or(exit_ns), Ordering::Release);
    }

    /// The monitor time of a guest TSC value, from the pair read at parking.
    fn instant_of_tsc(&self, tsc: u64, counter_khz: u32) -> Option<u64> {
        let ticks = tsc.checked_sub(self.counter_before.load(Ordering::Acquire))?;
        let nanos = (ticks as u128 * 1_000_000).checked_div(counter_khz as u128)?;
        let before_ns = self.counter_before_ns.load(Ordering::Acquire);
        u64::try_from(nanos).ok()?.checked_add(before_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked_at(tsc: u64, ns: u64, trigger_ns: u64) -> BootClock {
        let clock = BootClock::default();
        clock.counter_before.store(tsc, Ordering::Release);
        clock.counter_before_ns.store(ns, Ordering::Release);
        clock.trigger_ns.store(trigger_ns, Ordering::Release);
        clock
    }

    #[test]
    fn a_plausible_entry_counter_times_the_first_instruction() {
        // 1 GHz: one tick a nanosecond.
        let clock = parked_at(1_000, 10, 500);
        clock.record_entry(1_600, 1_000_000, 900);
        assert_eq!(clock.latency(), Some(Duration::from_nanos(110)));
    }

    #[test]
    fn an_implausible_entry_counter_falls_back_to_the_first_exit() {
        for entry_counter in [0, 999, 1_100, u64::MAX] {
            let clock = parked_at(1_000, 10, 500);
            clock.record_entry(entry_counter, 1_000_000, 900);
            assert_eq!(
                clock.latency(),
                Some(Duration::from_nanos(400)),
                "{entry_counter}"
            );
        }
        let clock = parked_at(1_000, 10, 500);
        clock.record_entry(1_600, 0, 900);
        assert_eq!(clock.latency(), Some(Duration::from_nanos(400)));
    }
}
