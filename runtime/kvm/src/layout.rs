//! The guest's address space, built from the host side: GDT and TSS, 4-level
//! page tables identity-mapping guest memory, and the map of what the guest
//! may read and write (which the hypercall checks use too).
//!
//! ```text
//! 0x0000            unmapped (null guard)
//! 0x1000            boot info + command line      user, RW, NX
//! 0x2000            GDT + TSS                     supervisor only
//! 0x3000..PT_END    page tables                   not mapped at all
//! 1 MiB..           image segments                user, R-X / R-- / RW- (NX)
//! image end..top    heap and stack                user, RW, NX
//! 4 GiB..           the conduit window            user, RW, NX; backed
//!                                                 only where a channel is open
//! ```
//! The image's 2 MiB region(s) use 4 KiB pages so that each segment gets its
//! own permissions; the heap above uses 2 MiB pages, and so does the conduit
//! window, whose slots have no memory behind them (an access is an exit the
//! monitor reports as a crash) until a channel's memory is put there.

use jitsu_abi::hypercall as hc;
use jitsu_abi::layout::{BOOT_INFO_ADDR, IMAGE_MIN_ADDR, PAGE_SIZE};
use thiserror::Error;

use crate::elf::KernelImage;
use crate::memory::{GuestMemory, MemoryError};

pub const GDT_ADDR: u64 = 0x2000;
pub const TSS_ADDR: u64 = GDT_ADDR + 0x100;
/// The TSS proper is 104 bytes; the I/O permission bitmap follows it.
const TSS_SIZE: u64 = 104;
const IO_BITMAP_BYTES: u64 = (hc::PORT_BASE as u64 + hc::PORT_WINDOW as u64).div_ceil(8);
/// Covers the bitmap and the all-ones byte the CPU wants after it.
pub const TSS_LIMIT: u32 = (TSS_SIZE + IO_BITMAP_BYTES) as u32;
pub const PML4_ADDR: u64 = 0x3000;
const PDPT_ADDR: u64 = 0x4000;
/// One page directory per GiB, up to the 4 GiB guest-memory limit.
const PD_ADDR: u64 = 0x5000;
/// The page directory of the conduit window (the fifth GiB).
const CONDUIT_PD_ADDR: u64 = 0x9000;
const PT_ADDR: u64 = 0xa000;
const PT_END: u64 = 0xf_0000;

const LARGE_PAGE: u64 = 0x20_0000;
const GIB: u64 = 1 << 30;

const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PS: u64 = 1 << 7;
const NX: u64 = 1 << 63;
const TABLE: u64 = P | RW | US;

/// GDT selectors (RPL 3 for the user ones).
pub const USER_CODE_SELECTOR: u16 = (3 << 3) | 3;
pub const USER_DATA_SELECTOR: u16 = (4 << 3) | 3;
pub const TSS_SELECTOR: u16 = 5 << 3;
pub const GDT_LIMIT: u16 = 7 * 8 - 1;
const GDT: [u64; 5] = [
    0,
    0x00af_9a00_0000_ffff, // kernel code (unused: the guest never runs at CPL 0)
    0x00cf_9200_0000_ffff, // kernel data (unused)
    0x00af_fa00_0000_ffff, // user code, 64-bit, DPL 3
    0x00cf_f200_0000_ffff, // user data, DPL 3
];

#[derive(Debug, Error)]
pub enum LayoutError {
    #[error(
        "the image needs {needed} page tables below 1 MiB, at most {max} fit (image too large)"
    )]
    ImageTooLarge { needed: u64, max: u64 },
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

/// A range of guest memory the guest may touch, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub writable: bool,
}

/// What the guest can reach from CPL 3. The monitor acts on the guest's
/// behalf only inside it, so a hypercall cannot be used to write code pages
/// or page tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessMap {
    regions: Vec<Region>,
}

impl AccessMap {
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Whether all of `[gpa, gpa + len)` is user-accessible (and writable,
    /// if `write`). Empty ranges are allowed anywhere inside memory bounds.
    pub fn allows(&self, gpa: u64, len: u64, write: bool) -> bool {
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        let mut cursor = gpa;
        while cursor < end {
            match self
                .regions
                .iter()
                .find(|r| r.start <= cursor && cursor < r.end)
            {
                Some(r) if r.writable || !write => cursor = r.end,
                _ => return false,
            }
        }
        true
    }
}

/// Writes GDT, TSS and page tables into `mem` and returns the access map;
/// with `conduit`, the window's pages are mapped too.
pub fn build(
    mem: &mut GuestMemory,
    image: &KernelImage,
    conduit: bool,
) -> Result<AccessMap, LayoutError> {
    let mem_size = mem.size();
    let heap_start = image.end();
    let small_end = heap_start.next_multiple_of(LARGE_PAGE);
    let tables = small_end / LARGE_PAGE;
    let max = (PT_END - PT_ADDR) / PAGE_SIZE;
    if tables > max {
        return Err(LayoutError::ImageTooLarge {
            needed: tables,
            max,
        });
    }

    write_gdt(mem)?;
    mem.write(PML4_ADDR, &(PDPT_ADDR | TABLE))?;
    for gib in 0..mem_size.div_ceil(GIB) {
        mem.write(PDPT_ADDR + gib * 8, &((PD_ADDR + gib * PAGE_SIZE) | TABLE))?;
    }
    let mut entries = Vec::with_capacity((small_end / PAGE_SIZE) as usize);
    for page in (0..small_end).step_by(PAGE_SIZE as usize) {
        entries.push(small_page_entry(page, image, heap_start, mem_size));
    }
    let pt_bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.slice_mut(PT_ADDR, pt_bytes.len() as u64)?
        .copy_from_slice(&pt_bytes);
    for chunk in 0..mem_size / LARGE_PAGE {
        let addr = chunk * LARGE_PAGE;
        let entry = if addr < small_end {
            (PT_ADDR + chunk * PAGE_SIZE) | TABLE
        } else {
            addr | P | RW | US | PS | NX
        };
        mem.write(PD_ADDR + chunk * 8, &entry)?;
    }
    if conduit {
        map_conduit_window(mem)?;
    }
    Ok(access_map(image, heap_start, mem_size))
}

/// The window's slots as user pages (2 MiB each), in a page directory of
/// their own. The hypercalls never take an address there (the access map
/// leaves it out): the monitor only ever touches guest memory.
fn map_conduit_window(mem: &mut GuestMemory) -> Result<(), LayoutError> {
    use jitsu_abi::conduit::{SLOTS, SLOT_SIZE, WINDOW_BASE};
    let gib = WINDOW_BASE / GIB;
    let end = WINDOW_BASE + SLOTS as u64 * SLOT_SIZE;
    debug_assert!(WINDOW_BASE % GIB == 0 && end <= (gib + 1) * GIB);
    mem.write(PDPT_ADDR + gib * 8, &(CONDUIT_PD_ADDR | TABLE))?;
    for addr in (WINDOW_BASE..end).step_by(LARGE_PAGE as usize) {
        let index = (addr - WINDOW_BASE) / LARGE_PAGE;
        mem.write(CONDUIT_PD_ADDR + index * 8, &(addr | P | RW | US | PS | NX))?;
    }
    Ok(())
}

fn small_page_entry(page: u64, image: &KernelImage, heap_start: u64, mem_size: u64) -> u64 {
    if page == BOOT_INFO_ADDR {
        return page | P | RW | US | NX;
    }
    if page == GDT_ADDR {
        return page | P | RW | NX; // supervisor only: CPL 3 cannot read it
    }
    if page >= heap_start && page < mem_size {
        return page | P | RW | US | NX;
    }
    if page < IMAGE_MIN_ADDR {
        return 0;
    }
    for s in &image.segments {
        let first = s.gpa & !(PAGE_SIZE - 1);
        if page >= first && page < s.end() {
            let write = if s.perms.write { RW } else { 0 };
            let nx = if s.perms.exec { 0 } else { NX };
            return page | P | US | write | nx;
        }
    }
    0 // a hole between segments stays unmapped
}

fn access_map(image: &KernelImage, heap_start: u64, mem_size: u64) -> AccessMap {
    let mut regions = vec![Region {
        start: BOOT_INFO_ADDR,
        end: BOOT_INFO_ADDR + PAGE_SIZE,
        writable: true,
    }];
    for s in &image.segments {
        regions.push(Region {
            start: s.gpa & !(PAGE_SIZE - 1),
            end: s.end().next_multiple_of(PAGE_SIZE),
            writable: s.perms.write,
        });
    }
    if heap_start < mem_size {
        regions.push(Region {
            start: heap_start,
            end: mem_size,
            writable: true,
        });
    }
    AccessMap { regions }
}

fn write_gdt(mem: &mut GuestMemory) -> Result<(), MemoryError> {
    for (i, entry) in GDT.iter().enumerate() {
        mem.write(GDT_ADDR + i as u64 * 8, entry)?;
    }
    let (low, high) = tss_descriptor(TSS_ADDR, TSS_LIMIT);
    mem.write(GDT_ADDR + 5 * 8, &low)?;
    mem.write(GDT_ADDR + 6 * 8, &high)?;
    write_io_bitmap(mem)
}

/// Lets CPL 3 use exactly the hypercall ports: the CPU consults the TSS I/O
/// bitmap when IOPL < CPL, and a set bit (every other port) is a #GP.
fn write_io_bitmap(mem: &mut GuestMemory) -> Result<(), MemoryError> {
    mem.slice_mut(TSS_ADDR + 0x66, 2)?
        .copy_from_slice(&(TSS_SIZE as u16).to_le_bytes());
    let bitmap = mem.slice_mut(TSS_ADDR + TSS_SIZE, IO_BITMAP_BYTES + 1)?;
    bitmap.fill(0xff);
    let base = hc::PORT_BASE as usize;
    for port in base..base + hc::PORT_WINDOW as usize {
        bitmap[port / 8] &= !(1 << (port % 8));
    }
    Ok(())
}

/// A 16-byte 64-bit TSS descriptor (type 9, present).
fn tss_descriptor(base: u64, limit: u32) -> (u64, u64) {
    let limit = limit as u64;
    let low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    (low, base >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::{Perms, Segment};

    fn image() -> KernelImage {
        let seg = |gpa, len, write, exec| Segment {
            gpa,
            mem_len: len,
            file_offset: 0,
            file_len: 0,
            perms: Perms { write, exec },
        };
        KernelImage {
            entry: 0x10_0000,
            segments: vec![
                seg(0x10_0000, 0x2000, false, true),
                seg(0x10_2000, 0x1000, false, false),
                seg(0x10_4000, 0x10, true, false),
            ],
            abi_version: 1,
        }
    }

    fn pte(mem: &GuestMemory, addr: u64) -> u64 {
        mem.read::<u64>(PT_ADDR + addr / PAGE_SIZE * 8).unwrap()
    }

    #[test]
    fn pages_carry_segment_permissions() {
        let mut mem = GuestMemory::new(8 << 20).unwrap();
        let map = build(&mut mem, &image(), false).unwrap();
        assert_eq!(pte(&mem, 0), 0, "null page unmapped");
        assert_eq!(pte(&mem, PML4_ADDR), 0, "page tables unmapped");
        assert_eq!(pte(&mem, GDT_ADDR) & US, 0, "GDT supervisor-only");
        let code = pte(&mem, 0x10_1000);
        assert!(code & US != 0 && code & RW == 0 && code & NX == 0);
        let rodata = pte(&mem, 0x10_2000);
        assert!(rodata & RW == 0 && rodata & NX != 0);
        assert_eq!(pte(&mem, 0x10_3000), 0, "hole unmapped");
        let data = pte(&mem, 0x10_4000);
        assert!(data & RW != 0 && data & NX != 0);
        let heap = pte(&mem, 0x10_5000);
        assert!(heap & RW != 0 && heap & NX != 0 && heap & US != 0);
        let large = mem.read::<u64>(PD_ADDR + 8).unwrap();
        assert_eq!(large, 0x20_0000 | P | RW | US | PS | NX);

        assert!(map.allows(0x10_0000, 0x3000, false));
        assert!(
            !map.allows(0x10_0000, 0x10, true),
            "code not writable via hypercalls"
        );
        assert!(!map.allows(0x10_3000, 1, false));
        assert!(!map.allows(PML4_ADDR, 8, true));
        assert!(
            map.allows(0x10_4000, 0x2000, true),
            "data runs into the heap"
        );
        assert!(!map.allows((8 << 20) - 4, 8, true));
        assert!(map.allows(0x1000, 0, true));
    }

    #[test]
    fn the_conduit_window_is_mapped_only_for_a_guest_that_has_the_device() {
        use jitsu_abi::conduit::{SLOTS, SLOT_SIZE, WINDOW_BASE};
        let mut without = GuestMemory::new(4 << 20).unwrap();
        build(&mut without, &image(), false).unwrap();
        assert_eq!(without.read::<u64>(PDPT_ADDR + 4 * 8).unwrap(), 0);
        let mut with = GuestMemory::new(4 << 20).unwrap();
        let map = build(&mut with, &image(), true).unwrap();
        assert_eq!(
            with.read::<u64>(PDPT_ADDR + 4 * 8).unwrap(),
            CONDUIT_PD_ADDR | TABLE
        );
        let last = (SLOTS as u64 * SLOT_SIZE) / LARGE_PAGE - 1;
        let entry = with.read::<u64>(CONDUIT_PD_ADDR + last * 8).unwrap();
        assert_eq!(
            entry,
            (WINDOW_BASE + last * LARGE_PAGE) | P | RW | US | PS | NX
        );
        let past = with.read::<u64>(CONDUIT_PD_ADDR + (last + 1) * 8).unwrap();
        assert_eq!(past, 0, "nothing past the last slot");
        assert!(
            !map.allows(WINDOW_BASE, 8, false),
            "no hypercall reaches the window"
        );
        const { assert!(CONDUIT_PD_ADDR + PAGE_SIZE <= PT_ADDR) };
    }

    #[test]
    fn tss_descriptor_encodes_base_and_limit() {
        let (low, high) = tss_descriptor(0x1234_5678_9abc, 0x67);
        assert_eq!(low & 0xffff, 0x67);
        assert_eq!((low >> 16) & 0xff_ffff, 0x56_789abc & 0xff_ffff);
        assert_eq!((low >> 40) & 0xff, 0x89);
        assert_eq!(high, 0x1234);
    }
}
