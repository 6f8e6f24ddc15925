//! Grant tables (version 1): the guest lets dom0 at some of its pages by
//! writing entries in table frames that Xen maps over frames of our image.
//! Grants here are made once and kept (ring pages, packet buffers), so
//! references come from a counter and are never freed.

use core::sync::atomic::{fence, AtomicU32, Ordering};

use super::hypercall;
use super::page::Frame;
use jitsu_xen_abi::defs::*;

const FRAMES: usize = 2;
const ENTRIES: u32 = (FRAMES * 4096 / 8) as u32;

static TABLE: [Frame; FRAMES] = [Frame::new(), Frame::new()];
static NEXT: AtomicU32 = AtomicU32::new(GNTTAB_NR_RESERVED_ENTRIES);
static MAPPED: AtomicU32 = AtomicU32::new(0);

fn init() -> Result<(), i64> {
    if MAPPED.load(Ordering::Acquire) != 0 {
        return Ok(());
    }
    for (idx, frame) in TABLE.iter().enumerate() {
        let mut map = AddToPhysmap {
            domid: DOMID_SELF,
            size: 0,
            space: XENMAPSPACE_GRANT_TABLE,
            idx: idx as u64,
            gpfn: frame.gfn(),
        };
        let rc = hypercall::memory_op(XENMEM_ADD_TO_PHYSMAP, &mut map);
        if rc != 0 {
            return Err(rc);
        }
    }
    MAPPED.store(1, Ordering::Release);
    Ok(())
}

/// Lets `domid` at the page at `addr` (read-only if `readonly`); returns
/// the grant reference to hand it.
pub fn grant(domid: u16, addr: u64, readonly: bool) -> Result<u32, &'static str> {
    init().map_err(|_| "cannot map the grant table")?;
    let gref = NEXT.fetch_add(1, Ordering::Relaxed);
    if gref >= ENTRIES {
        return Err("out of grant references");
    }
    let frame = &TABLE[(gref / 512) as usize];
    let entry = (frame.addr() as *mut GrantEntryV1).wrapping_add((gref % 512) as usize);
    let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
    // SAFETY: `entry` lies in a grant table frame Xen mapped for us, and this
    // reference was handed out once, so nothing else writes it. Frame and
    // domid must be visible before the flags make the entry live.
    unsafe {
        core::ptr::addr_of_mut!((*entry).frame).write_volatile((addr >> 12) as u32);
        core::ptr::addr_of_mut!((*entry).domid).write_volatile(domid);
        fence(Ordering::Release);
        core::ptr::addr_of_mut!((*entry).flags).write_volatile(flags);
    }
    Ok(gref)
}
