//! The PV console: a byte ring in a page that xenconsoled reads (so `xl
//! console` and the Jitsu monitor both see it), with an event channel to
//! tell it there is more.

use core::sync::atomic::{fence, AtomicPtr, AtomicU32, Ordering};

use super::{events, hvm_param};
use jitsu_xen_abi::defs::*;

static RING: AtomicPtr<ConsoleInterface> = AtomicPtr::new(core::ptr::null_mut());
static PORT: AtomicU32 = AtomicU32::new(0);

/// How long a full ring may hold a writer up before output is dropped: a
/// console nobody reads must not stop the unikernel.
const STALL_NANOS: u64 = 1_000_000_000;

pub fn init() -> Result<(), i64> {
    let pfn = hvm_param(HVM_PARAM_CONSOLE_PFN)?;
    let port = hvm_param(HVM_PARAM_CONSOLE_EVTCHN)?;
    PORT.store(port as u32, Ordering::Relaxed);
    RING.store((pfn << 12) as *mut ConsoleInterface, Ordering::Release);
    Ok(())
}

fn ring() -> Option<*mut ConsoleInterface> {
    let ring = RING.load(Ordering::Acquire);
    (!ring.is_null()).then_some(ring)
}

/// The ring's free bytes: what the consumer has not yet taken is in use.
fn space(ring: *mut ConsoleInterface) -> (u32, u32) {
    // SAFETY: the console page stays mapped (identity map of its special
    // pfn) for the domain's life; xenconsoled moves out_cons concurrently,
    // hence the volatile read.
    let (cons, prod) = unsafe {
        (
            core::ptr::read_volatile(core::ptr::addr_of!((*ring).out_cons)),
            core::ptr::read_volatile(core::ptr::addr_of!((*ring).out_prod)),
        )
    };
    fence(Ordering::Acquire);
    let out_len = 2048u32;
    (out_len - prod.wrapping_sub(cons).min(out_len), prod)
}

pub fn write(mut bytes: &[u8]) {
    let Some(ring) = ring() else { return };
    let port = PORT.load(Ordering::Relaxed);
    let mut stalled_since = None;
    while !bytes.is_empty() {
        let (free, prod) = space(ring);
        if free == 0 {
            let since = *stalled_since.get_or_insert_with(events::system_time_nanos);
            if events::system_time_nanos().saturating_sub(since) > STALL_NANOS {
                return;
            }
            events::take(port);
            events::wait(&[port], 10_000_000);
            continue;
        }
        stalled_since = None;
        let n = (free as usize).min(bytes.len());
        for (i, &byte) in bytes[..n].iter().enumerate() {
            let at = (prod.wrapping_add(i as u32) % 2048) as usize;
            // SAFETY: `at` is inside the output array of the mapped ring,
            // in the part the consumer has released.
            unsafe { core::ptr::addr_of_mut!((*ring).output[at]).write_volatile(byte) };
        }
        fence(Ordering::Release);
        // SAFETY: as above; only this producer writes out_prod.
        unsafe {
            core::ptr::addr_of_mut!((*ring).out_prod).write_volatile(prod.wrapping_add(n as u32))
        };
        events::notify(port);
        bytes = &bytes[n..];
    }
}

/// Waits (a bounded while) until xenconsoled has taken everything, so that
/// the last lines are not lost when the domain shuts down.
pub fn drain() {
    let Some(ring) = ring() else { return };
    let port = PORT.load(Ordering::Relaxed);
    let start = events::system_time_nanos();
    while space(ring).0 < 2048 && events::system_time_nanos().saturating_sub(start) < STALL_NANOS {
        events::take(port);
        events::wait(&[port], 10_000_000);
    }
}
