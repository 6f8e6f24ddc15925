//! Event channels (2-level ABI) and Xen's clock, both from the shared info
//! page. The guest never enables interrupts: it blocks in `SCHEDOP_poll` on
//! the ports it waits for, and clears their pending bits itself.

use core::sync::atomic::{fence, AtomicPtr, AtomicU64, Ordering};

use super::hypercall;
use super::page::Frame;
use jitsu_xen_abi::defs::*;

static SHARED_INFO_FRAME: Frame = Frame::new();
static SHARED: AtomicPtr<SharedInfo> = AtomicPtr::new(core::ptr::null_mut());

/// Puts the shared info page over a frame of our image. Returns Xen's error.
pub fn init() -> Result<(), i64> {
    let mut map = AddToPhysmap {
        domid: DOMID_SELF,
        size: 0,
        space: XENMAPSPACE_SHARED_INFO,
        idx: 0,
        gpfn: SHARED_INFO_FRAME.gfn(),
    };
    let rc = hypercall::memory_op(XENMEM_ADD_TO_PHYSMAP, &mut map);
    if rc != 0 {
        return Err(rc);
    }
    SHARED.store(
        SHARED_INFO_FRAME.addr() as *mut SharedInfo,
        Ordering::Release,
    );
    Ok(())
}

fn shared() -> *mut SharedInfo {
    SHARED.load(Ordering::Acquire)
}

fn pending_word(port: u32) -> Option<&'static AtomicU64> {
    let shared = shared();
    if shared.is_null() || port as usize >= EVTCHN_WORDS * 64 {
        return None;
    }
    // SAFETY: the shared info page is mapped for the guest's whole life;
    // Xen sets bits in it concurrently, which is why the word is accessed
    // atomically (AtomicU64 has u64's layout).
    unsafe {
        let words = core::ptr::addr_of_mut!((*shared).evtchn_pending) as *mut AtomicU64;
        Some(&*words.add(port as usize / 64))
    }
}

/// Clears `port`'s pending bit; true if it was set.
pub fn take(port: u32) -> bool {
    let bit = 1u64 << (port % 64);
    pending_word(port).is_some_and(|word| word.fetch_and(!bit, Ordering::AcqRel) & bit != 0)
}

/// Tells the other end of `port`.
pub fn notify(port: u32) {
    let mut send = EvtchnSend { port };
    hypercall::event_channel_op(EVTCHNOP_SEND, &mut send);
}

/// A fresh port that domain `remote` may bind to.
pub fn alloc_unbound(remote: u16) -> Result<u32, i64> {
    let mut alloc = EvtchnAllocUnbound {
        dom: DOMID_SELF,
        remote_dom: remote,
        port: 0,
    };
    match hypercall::event_channel_op(EVTCHNOP_ALLOC_UNBOUND, &mut alloc) {
        0 => Ok(alloc.port),
        rc => Err(rc),
    }
}

/// Binds a local port to `remote_port` of domain `remote`.
pub fn bind_interdomain(remote: u16, remote_port: u32) -> Result<u32, i64> {
    let mut bind = EvtchnBindInterdomain {
        remote_dom: remote,
        remote_port,
        local_port: 0,
    };
    match hypercall::event_channel_op(EVTCHNOP_BIND_INTERDOMAIN, &mut bind) {
        0 => Ok(bind.local_port),
        rc => Err(rc),
    }
}

/// Closes `port` (the other end sees it closed).
pub fn close(port: u32) {
    let mut close = EvtchnClose { port };
    hypercall::event_channel_op(EVTCHNOP_CLOSE, &mut close);
}

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
    let shared = shared();
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
