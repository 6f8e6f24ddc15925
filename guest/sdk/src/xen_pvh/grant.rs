//! Grant tables (version 1): the guest lets another domain at some of its
//! pages by writing entries in table frames that Xen maps over frames of
//! our image, and maps pages other domains granted it. Netfront's grants
//! are made once and kept; a Conduit channel's are given back when it
//! closes, so references are handed out from a free list as well as a
//! counter.

use core::sync::atomic::{fence, AtomicU16, AtomicU32, AtomicU64, Ordering};

use super::hypercall;
use super::page::Frame;
use jitsu_xen_abi::defs::*;

pub const FRAMES: usize = 8;
const ENTRIES: u32 = (FRAMES * 4096 / 8) as u32;

static TABLE: [Frame; FRAMES] = [const { Frame::new() }; FRAMES];
/// Where the table's frames go when the domain was given a region for them
/// (arm64: the device tree's `/hypervisor` region); 0: over `TABLE`.
static REGION: AtomicU64 = AtomicU64::new(0);
static NEXT: AtomicU32 = AtomicU32::new(GNTTAB_NR_RESERVED_ENTRIES);
static MAPPED: AtomicU32 = AtomicU32::new(0);
/// References given back, one bit each.
static FREE: [AtomicU64; (ENTRIES / 64) as usize] =
    [const { AtomicU64::new(0) }; (ENTRIES / 64) as usize];

/// Maps the table's frames at `base` (a region with no RAM behind it, at
/// least `FRAMES` pages) instead of over frames of the image. Called once,
/// before the first grant.
#[cfg(target_arch = "aarch64")]
pub fn place_at(base: u64) {
    REGION.store(base, Ordering::Relaxed);
}

fn frame_addr(idx: usize) -> u64 {
    match REGION.load(Ordering::Relaxed) {
        0 => TABLE[idx].addr(),
        base => base + idx as u64 * 4096,
    }
}

fn init() -> Result<(), i64> {
    if MAPPED.load(Ordering::Acquire) != 0 {
        return Ok(());
    }
    for idx in 0..FRAMES {
        let mut map = AddToPhysmap {
            domid: DOMID_SELF,
            size: 0,
            space: XENMAPSPACE_GRANT_TABLE,
            idx: idx as u64,
            gpfn: frame_addr(idx) >> 12,
        };
        let rc = hypercall::memory_op(XENMEM_ADD_TO_PHYSMAP, &mut map);
        if rc != 0 {
            return Err(rc);
        }
    }
    MAPPED.store(1, Ordering::Release);
    Ok(())
}

fn entry(gref: u32) -> *mut GrantEntryV1 {
    (frame_addr((gref / 512) as usize) as *mut GrantEntryV1).wrapping_add((gref % 512) as usize)
}

/// A reference nobody holds: one given back, else a fresh one.
fn take_reference() -> Option<u32> {
    for (word, bits) in FREE.iter().enumerate() {
        let mut current = bits.load(Ordering::Acquire);
        while current != 0 {
            let bit = current.trailing_zeros();
            match bits.compare_exchange(
                current,
                current & !(1 << bit),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(word as u32 * 64 + bit),
                Err(now) => current = now,
            }
        }
    }
    let gref = NEXT.fetch_add(1, Ordering::Relaxed);
    (gref < ENTRIES).then_some(gref)
}

/// Lets `domid` at the page at `addr` (read-only if `readonly`); returns
/// the grant reference to hand it.
pub fn grant(domid: u16, addr: u64, readonly: bool) -> Result<u32, &'static str> {
    init().map_err(|_| "cannot map the grant table")?;
    let gref = take_reference().ok_or("out of grant references")?;
    let entry = entry(gref);
    let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
    // SAFETY: `entry` lies in a grant table frame Xen mapped for us, and this
    // reference is ours alone until revoked, so nothing else writes it. Frame
    // and domid must be visible before the flags make the entry live.
    unsafe {
        core::ptr::addr_of_mut!((*entry).frame).write_volatile((addr >> 12) as u32);
        core::ptr::addr_of_mut!((*entry).domid).write_volatile(domid);
        fence(Ordering::Release);
        core::ptr::addr_of_mut!((*entry).flags).write_volatile(flags);
    }
    Ok(gref)
}

/// Ends `gref`'s grant and gives the reference back, unless the grantee
/// still has the page mapped (Xen's reading/writing bits): then it is left
/// as it is, false is returned, and the page must not be used again.
pub fn revoke(gref: u32) -> bool {
    if !(GNTTAB_NR_RESERVED_ENTRIES..ENTRIES).contains(&gref) {
        return false;
    }
    // SAFETY: the entry lies in a mapped grant table frame; Xen changes the
    // flags concurrently, so they are only touched atomically (AtomicU16
    // has u16's layout, and the field is 2-aligned).
    let flags = unsafe { AtomicU16::from_ptr(core::ptr::addr_of_mut!((*entry(gref)).flags)) };
    let mut current = flags.load(Ordering::Acquire);
    loop {
        if current & (GTF_READING | GTF_WRITING) != 0 {
            return false;
        }
        match flags.compare_exchange(current, 0, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break,
            Err(now) => current = now,
        }
    }
    FREE[(gref / 64) as usize].fetch_or(1 << (gref % 64), Ordering::AcqRel);
    true
}

/// Maps the page `domid` granted as `gref` at guest-physical `gpa` (a frame
/// with no RAM behind it); returns the handle that unmaps it.
pub fn map(domid: u16, gref: u32, gpa: u64) -> Result<u32, &'static str> {
    let mut op = GnttabMapGrantRef {
        host_addr: gpa,
        flags: GNTMAP_HOST_MAP,
        gref,
        dom: domid,
        ..GnttabMapGrantRef::default()
    };
    let rc = hypercall::grant_table_op(GNTTABOP_MAP_GRANT_REF, &mut op);
    if rc != 0 || op.status != 0 {
        return Err("the peer's grant could not be mapped");
    }
    Ok(op.handle)
}

/// Unmaps a page [`map`] mapped at `gpa`.
pub fn unmap(gpa: u64, handle: u32) {
    let mut op = GnttabUnmapGrantRef {
        host_addr: gpa,
        handle,
        ..GnttabUnmapGrantRef::default()
    };
    hypercall::grant_table_op(GNTTABOP_UNMAP_GRANT_REF, &mut op);
}
