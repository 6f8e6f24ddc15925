//! Xen domains of libxl's type PVH: on x86-64 and on arm64. The guest talks
//! to dom0 through shared rings: console, XenStore, netfront (grant tables
//! and event channels underneath), the same code on both. What differs is
//! in one folder per architecture, with the same parts in each: `start`
//! (entry and memory), `hypercall` (how a call reaches Xen) and `time` (the
//! clock, and blocking until an event or a deadline). Xen's structures and
//! the ring protocol are in `xen-abi/` (`jitsu-xen-abi`), where they are
//! tested on the host.

pub(crate) mod conduit;
mod console;
mod events;
mod grant;
mod hypercall;
pub(crate) mod net;
mod netconfig;
mod page;
pub(crate) mod xenstore;

#[cfg_attr(target_arch = "x86_64", path = "x86_64/mod.rs")]
#[cfg_attr(target_arch = "aarch64", path = "aarch64/mod.rs")]
mod arch;

pub(crate) use arch::counter;

use defs::*;
use jitsu_xen_abi::defs;

pub(crate) const NAME: &str = "xen-pvh";

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

/// What every architecture's start does once the machine is set up and the
/// console works: the heap, XenStore, the network's configuration, main.
fn run(cmdline: &'static str, mem_size: u64, heap: (u64, u64)) -> ! {
    crate::heap::init(heap.0, heap.1);
    if let Err(err) = xenstore::init() {
        crate::println!("xen: XenStore: {err}");
        shutdown(SHUTDOWN_CRASH);
    }
    let net = match netconfig::read() {
        Ok(net) => net,
        Err(err) => {
            crate::println!("xen: network configuration: {err}");
            shutdown(SHUTDOWN_CRASH);
        }
    };
    crate::run_main(crate::boot::Boot {
        cmdline,
        mem_size,
        net,
    })
}

fn shutdown(reason: u32) -> ! {
    let mut arg = SchedShutdown { reason };
    loop {
        hypercall::sched_op(SCHEDOP_SHUTDOWN, &mut arg);
    }
}
