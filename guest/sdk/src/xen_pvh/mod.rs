//! Xen PVH domains (x86-64): the guest runs in long mode it sets up itself
//! (`start.rs`), calls Xen through the hypercall page, and talks to dom0
//! through shared rings: console, XenStore, netfront (grant tables and event
//! channels underneath). Xen's structures and the ring protocol are in
//! `xen-abi/` (`jitsu-xen-abi`), where they are tested on the host.

pub(crate) mod conduit;
mod console;
mod events;
mod grant;
mod hypercall;
pub(crate) mod net;
mod netconfig;
mod page;
mod start;
pub(crate) mod xenstore;

use defs::*;
use jitsu_xen_abi::defs;

pub(crate) const NAME: &str = "xen-pvh";

/// The TSC, which Xen's time info scales to system time.
#[inline]
pub(crate) fn counter() -> u64 {
    // SAFETY: rdtsc reads a counter; the domain's CR4.TSD is clear.
    unsafe { core::arch::x86_64::_rdtsc() }
}

pub(crate) fn console_write(bytes: &[u8]) {
    console::write(bytes);
}

/// Reads one of this domain's HVM parameters (where Xen put the console
/// and XenStore pages, and their event channels).
fn hvm_param(index: u32) -> Result<u64, i64> {
    let mut param = HvmParam {
        domid: DOMID_SELF,
        pad: 0,
        index,
        value: 0,
    };
    match hypercall::hvm_op(HVMOP_GET_PARAM, &mut param) {
        0 => Ok(param.value),
        rc => Err(rc),
    }
}

/// Ends the domain. Xen's shutdown carries a reason, not a status, so the
/// status goes to `data/exit-status` first (the one part of its home a
/// domain may write), where the Jitsu backend reads it; a stock toolstack
/// sees a power-off.
pub(crate) fn halt(status: u8) -> ! {
    let mut text = xenstore::Text::<4>::new();
    let _ = core::fmt::Write::write_fmt(&mut text, format_args!("{status}"));
    let _ = xenstore::write("data/exit-status", text.as_str());
    console::drain();
    shutdown(SHUTDOWN_POWEROFF)
}

fn shutdown(reason: u32) -> ! {
    let mut arg = SchedShutdown { reason };
    loop {
        hypercall::sched_op(SCHEDOP_SHUTDOWN, &mut arg);
    }
}
