//! Event channels (2-level ABI), through the shared info page. The guest
//! never takes an interrupt: it blocks until a port it waits for is pending
//! (or a deadline passes) and clears the pending bits itself. How it blocks
//! and keeps time is the architecture's (`time.rs` in `x86_64/`, `aarch64/`).

use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use super::hypercall;
use super::page::Frame;
#[cfg(target_arch = "aarch64")]
use jitsu_xen_abi::defs::arm64::SharedInfo;
use jitsu_xen_abi::defs::*;

pub use super::arch::time::{system_time_nanos, wait};

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

pub(super) fn shared() -> *mut SharedInfo {
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

/// Whether `port` is pending (its bit is left as it is): arm64's wait
/// looks; x86-64's leaves it to Xen's poll.
#[cfg(target_arch = "aarch64")]
pub fn pending(port: u32) -> bool {
    pending_word(port).is_some_and(|word| word.load(Ordering::Acquire) & (1u64 << (port % 64)) != 0)
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
