//! arm64 time and waiting. The clock is the generic timer's virtual count,
//! which Xen starts near zero when it creates the domain; Xen keeps no time
//! info for arm64 guests, so "system time" here is the guest's own
//! (nanoseconds since its first instruction), used only for its deadlines.
//!
//! Waiting arms the virtual timer at the deadline and sleeps in `wfi`. Xen
//! wakes the vCPU when an enabled interrupt is pending: the timer's, or the
//! event channel upcall, which Xen raises when `evtchn_upcall_pending` goes
//! from 0 to 1. So each round clears that flag and the selector word first,
//! then looks at the ports: an event that lands after the look raises the
//! upcall again, and `wfi` returns at once.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use super::gic;
use crate::platform::events;

/// CNTV_CTL_EL0.ENABLE, with IMASK clear.
const TIMER_ON: u64 = 1;

/// CNTVCT_EL0, the virtual count: readable at EL1 without a trap.
#[inline]
pub(crate) fn counter() -> u64 {
    let count: u64;
    // SAFETY: reads a system register; the ISB keeps the read in program
    // order, as a time stamp needs.
    unsafe { asm!("isb", "mrs {}, cntvct_el0", out(reg) count, options(nomem, nostack)) };
    count
}

/// CNTFRQ_EL0, the count's rate, set up for the guest by Xen.
pub fn counter_hz() -> u64 {
    let hz: u64;
    // SAFETY: reads a system register.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) hz, options(nomem, nostack)) };
    hz
}

/// Nanoseconds since the guest's first instruction.
pub fn system_time_nanos() -> u64 {
    crate::clock::now_nanos()
}

fn nanos_to_ticks(nanos: u64) -> u64 {
    (nanos as u128 * crate::clock::counter_hz() as u128 / 1_000_000_000) as u64
}

/// Clears vCPU 0's upcall flag and selector word, so that Xen raises the
/// upcall again for the next event.
fn rearm_upcall() {
    let shared = events::shared();
    if shared.is_null() {
        return;
    }
    // SAFETY: the shared info page is mapped for the guest's whole life;
    // Xen writes these fields concurrently, so they are touched atomically
    // (AtomicU8/AtomicU64 have the layouts of u8/u64, and the fields are
    // aligned as the atomics need).
    unsafe {
        let info = core::ptr::addr_of_mut!((*shared).vcpu_info[0]);
        AtomicU8::from_ptr(core::ptr::addr_of_mut!((*info).evtchn_upcall_pending))
            .store(0, Ordering::SeqCst);
        AtomicU64::from_ptr(core::ptr::addr_of_mut!((*info).evtchn_pending_sel))
            .swap(0, Ordering::SeqCst);
    }
}

fn set_timer(deadline: Option<u64>) {
    // SAFETY: the virtual timer's registers are the guest's own; writing
    // them only decides when its interrupt is raised.
    unsafe {
        match deadline {
            Some(at) => asm!(
                "msr cntv_cval_el0, {at}",
                "msr cntv_ctl_el0, {on}",
                "isb",
                at = in(reg) at,
                on = in(reg) TIMER_ON,
                options(nomem, nostack)
            ),
            None => asm!("msr cntv_ctl_el0, xzr", "isb", options(nomem, nostack)),
        }
    }
}

/// Blocks until one of `ports` is pending or `timeout_nanos` passed
/// (`u64::MAX`: no deadline). Pending bits are left for the caller.
pub fn wait(ports: &[u32], timeout_nanos: u64) {
    let deadline = (timeout_nanos != u64::MAX)
        .then(|| counter().saturating_add(nanos_to_ticks(timeout_nanos).max(1)));
    loop {
        rearm_upcall();
        gic::ack_all();
        if ports.iter().any(|&port| events::pending(port)) {
            break;
        }
        if deadline.is_some_and(|at| counter() >= at) {
            break;
        }
        set_timer(deadline);
        // SAFETY: waits for an interrupt; the barrier makes our stores
        // (the cleared upcall flag) visible to Xen first.
        unsafe { asm!("dsb sy", "wfi", options(nomem, nostack)) };
    }
    set_timer(None);
}
