//! x86-64: Xen's system time from the TSC and the scale Xen publishes in
//! vCPU 0's time info, and blocking in `SCHEDOP_poll`, whose deadline is
//! in that time.

use core::sync::atomic::{fence, Ordering};

use crate::platform::{events, hypercall};
use jitsu_xen_abi::defs::*;

/// Blocks until one of `ports` is pending or `timeout_nanos` passed
/// (`u64::MAX`: no deadline). Pending bits are left for the caller.
pub fn wait(ports: &[u32], timeout_nanos: u64) {
    let timeout = if timeout_nanos == u64::MAX {
        0
    } else {
        system_time_nanos().saturating_add(timeout_nanos.max(1))
    };
    let mut poll = SchedPoll {
        ports: ports.as_ptr(),
        nr_ports: ports.len() as u32,
        timeout,
    };
    hypercall::sched_op(SCHEDOP_POLL, &mut poll);
}

/// A consistent copy of vCPU 0's time info (Xen bumps `version` around updates).
fn time_info() -> Option<(u64, u64, u32, i8)> {
    let shared = events::shared();
    if shared.is_null() {
        return None;
    }
    loop {
        // SAFETY: the page is mapped for good; the fields are read with
        // volatile loads between two reads of the version, as Xen asks.
        unsafe {
            let time = core::ptr::addr_of!((*shared).vcpu_info[0].time);
            let version = core::ptr::read_volatile(core::ptr::addr_of!((*time).version));
            fence(Ordering::Acquire);
            let tsc = core::ptr::read_volatile(core::ptr::addr_of!((*time).tsc_timestamp));
            let system = core::ptr::read_volatile(core::ptr::addr_of!((*time).system_time));
            let mul = core::ptr::read_volatile(core::ptr::addr_of!((*time).tsc_to_system_mul));
            let shift = core::ptr::read_volatile(core::ptr::addr_of!((*time).tsc_shift));
            fence(Ordering::Acquire);
            if version & 1 == 0
                && version == core::ptr::read_volatile(core::ptr::addr_of!((*time).version))
            {
                return Some((tsc, system, mul, shift));
            }
        }
    }
}

fn scale(delta: u64, mul: u32, shift: i8) -> u64 {
    let delta = if shift >= 0 {
        delta << shift
    } else {
        delta >> -shift
    };
    ((delta as u128 * mul as u128) >> 32) as u64
}

/// Xen's system time: nanoseconds since the hypervisor booted.
pub fn system_time_nanos() -> u64 {
    let Some((tsc, system, mul, shift)) = time_info() else {
        return 0;
    };
    system + scale(crate::clock::counter().saturating_sub(tsc), mul, shift)
}

/// The TSC's rate, from the scale Xen publishes (ticks → nanoseconds).
pub fn counter_hz() -> u64 {
    let Some((_, _, mul, shift)) = time_info() else {
        return 1;
    };
    let hz = (1_000_000_000u128 << 32) / mul.max(1) as u128;
    (if shift >= 0 {
        hz >> shift
    } else {
        hz << -shift
    }) as u64
}
