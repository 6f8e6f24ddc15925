//! The guest's address space, built from the host side: page tables
//! identity-mapping guest memory, the monitor's own page, and the map of
//! what the guest may read and write (which the hypercall checks use too).
//! The tables are the same three levels on both architectures (a PDPT of
//! 1 GiB entries, page directories of 2 MiB ones, page tables of 4 KiB
//! pages: arm64's levels 1 to 3 with a 39-bit address space); how an entry
//! encodes a [`Mapping`] is `arch::tables`' business.
//!
//! ```text
//! 0x0000            unmapped (null guard)
//! 0x1000            boot info + command line      guest, RW, NX
//! 0x2000            the monitor's page            x86-64: GDT + TSS, supervisor
//!                                                 only; arm64: the exception
//!                                                 vectors, read-only code
//! 0x3000..PT_END    page tables                   not mapped at all
//! 1 MiB..           image segments                guest, R-X / R-- / RW- (NX)
//! image end..top    heap and stack                guest, RW, NX
//! 4 GiB..           the conduit window            guest, RW, NX; backed
//!                                                 only where a channel is open
//! 4 GiB + 256 MiB   arm64: the hypercall page     device memory
//! ```
//! The image's 2 MiB region(s) use 4 KiB pages so that each segment gets its
//! own permissions; the heap above uses 2 MiB pages, and so does the conduit
//! window, whose slots have no memory behind them (an access is an exit the
//! monitor reports as a crash) until a channel's memory is put there.

use jitsu_abi::layout::{BOOT_INFO_ADDR, IMAGE_MIN_ADDR, PAGE_SIZE};
use thiserror::Error;

use crate::arch::tables;
use crate::elf::KernelImage;
use crate::memory::{GuestMemory, MemoryError};

/// The GDT and TSS (x86-64) or the exception vectors (arm64).
pub const MONITOR_PAGE: u64 = 0x2000;
/// The 1 GiB entries (x86-64: under a PML4 at 0x3000; arm64: TTBR0).
pub const PDPT_ADDR: u64 = 0x4000;
/// One page directory per GiB, up to the 4 GiB guest-memory limit.
const PD_ADDR: u64 = 0x5000;
/// The page directory of the fifth GiB: the conduit window (and on arm64
/// the hypercall page).
const HIGH_PD_ADDR: u64 = 0x9000;
const PT_ADDR: u64 = 0xa000;
const PT_END: u64 = 0xf_0000;

const LARGE_PAGE: u64 = 0x20_0000;
const GIB: u64 = 1 << 30;

/// What a page is for; each architecture encodes it in its own entry bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// The guest's: readable, writable or executable (never both) as its
    /// segment says.
    Guest { write: bool, exec: bool },
    /// The monitor's page: on x86-64 out of the guest's reach (CPL 3); on
    /// arm64 the guest's exception vectors, read-only code at EL1.
    Monitor,
    /// Device memory: arm64's hypercall page.
    Device,
}

const DATA: Mapping = Mapping::Guest {
    write: true,
    exec: false,
};

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

/// Writes the monitor's page and the page tables into `mem` and returns
/// the access map; with `conduit`, the window's pages are mapped too.
pub fn build(
    mem: &mut GuestMemory,
    image: &KernelImage,
    conduit: bool,
) -> Result<AccessMap, LayoutError> {
    let mem_size = mem.size();
    let heap_start = image.end();
    let small_end = heap_start.next_multiple_of(LARGE_PAGE);
    let page_tables = small_end / LARGE_PAGE;
    let max = (PT_END - PT_ADDR) / PAGE_SIZE;
    if page_tables > max {
        return Err(LayoutError::ImageTooLarge {
            needed: page_tables,
            max,
        });
    }

    tables::write_monitor_page(mem)?;
    tables::write_root(mem, PDPT_ADDR)?;
    for gib in 0..mem_size.div_ceil(GIB) {
        let pd = PD_ADDR + gib * PAGE_SIZE;
        mem.write(PDPT_ADDR + gib * 8, &tables::table(pd))?;
    }
    let mut entries = Vec::with_capacity((small_end / PAGE_SIZE) as usize);
    for page in (0..small_end).step_by(PAGE_SIZE as usize) {
        let entry = small_page_mapping(page, image, heap_start, mem_size)
            .map_or(0, |m| tables::page(page, m));
        entries.push(entry);
    }
    let pt_bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.slice_mut(PT_ADDR, pt_bytes.len() as u64)?
        .copy_from_slice(&pt_bytes);
    for chunk in 0..mem_size / LARGE_PAGE {
        let addr = chunk * LARGE_PAGE;
        let entry = if addr < small_end {
            tables::table(PT_ADDR + chunk * PAGE_SIZE)
        } else {
            tables::block(addr, DATA)
        };
        mem.write(PD_ADDR + chunk * 8, &entry)?;
    }
    map_high(mem, conduit)?;
    Ok(access_map(image, heap_start, mem_size))
}

/// The fifth GiB: the conduit window's slots as guest pages (2 MiB each),
/// and the architecture's own blocks there. The hypercalls never take an
/// address in it (the access map leaves it out): the monitor only ever
/// touches guest memory.
fn map_high(mem: &mut GuestMemory, conduit: bool) -> Result<(), LayoutError> {
    use jitsu_abi::conduit::{SLOTS, SLOT_SIZE, WINDOW_BASE};
    let gib = WINDOW_BASE / GIB;
    let window_end = WINDOW_BASE + SLOTS as u64 * SLOT_SIZE;
    debug_assert!(WINDOW_BASE % GIB == 0 && window_end <= (gib + 1) * GIB);
    let window = (WINDOW_BASE..window_end)
        .step_by(LARGE_PAGE as usize)
        .filter(|_| conduit)
        .map(|addr| (addr, DATA));
    let mut blocks = window.chain(tables::HIGH_BLOCKS.iter().copied()).peekable();
    if blocks.peek().is_none() {
        return Ok(());
    }
    mem.write(PDPT_ADDR + gib * 8, &tables::table(HIGH_PD_ADDR))?;
    for (addr, mapping) in blocks {
        debug_assert!(addr / GIB == gib && addr % LARGE_PAGE == 0);
        let index = (addr - gib * GIB) / LARGE_PAGE;
        mem.write(HIGH_PD_ADDR + index * 8, &tables::block(addr, mapping))?;
    }
    Ok(())
}

fn small_page_mapping(
    page: u64,
    image: &KernelImage,
    heap_start: u64,
    mem_size: u64,
) -> Option<Mapping> {
    if page == BOOT_INFO_ADDR {
        return Some(DATA);
    }
    if page == MONITOR_PAGE {
        return Some(Mapping::Monitor);
    }
    if page >= heap_start && page < mem_size {
        return Some(DATA);
    }
    if page < IMAGE_MIN_ADDR {
        return None;
    }
    // A hole between segments stays unmapped.
    let s = image.segments.iter().find(|s| {
        let first = s.gpa & !(PAGE_SIZE - 1);
        page >= first && page < s.end()
    })?;
    Some(Mapping::Guest {
        write: s.perms.write,
        exec: s.perms.exec,
    })
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

    /// What the 4 KiB page at `addr` (in the first 2 MiB) maps.
    fn page(mem: &GuestMemory, addr: u64) -> Option<Mapping> {
        tables::decode(mem.read::<u64>(PT_ADDR + addr / PAGE_SIZE * 8).unwrap())
    }

    fn guest(write: bool, exec: bool) -> Option<Mapping> {
        Some(Mapping::Guest { write, exec })
    }

    #[test]
    fn pages_carry_segment_permissions() {
        let mut mem = GuestMemory::new(8 << 20).unwrap();
        let map = build(&mut mem, &image(), false).unwrap();
        assert_eq!(page(&mem, 0), None, "null page unmapped");
        assert_eq!(page(&mem, PDPT_ADDR), None, "page tables unmapped");
        assert_eq!(page(&mem, MONITOR_PAGE), Some(Mapping::Monitor));
        assert_eq!(page(&mem, BOOT_INFO_ADDR), guest(true, false));
        assert_eq!(page(&mem, 0x10_1000), guest(false, true), "code");
        assert_eq!(page(&mem, 0x10_2000), guest(false, false), "rodata");
        assert_eq!(page(&mem, 0x10_3000), None, "hole unmapped");
        assert_eq!(page(&mem, 0x10_4000), guest(true, false), "data");
        assert_eq!(page(&mem, 0x10_5000), guest(true, false), "heap");
        let large = mem.read::<u64>(PD_ADDR + 8).unwrap();
        assert_eq!(large, tables::block(0x20_0000, DATA));
        assert_eq!(tables::decode(large), guest(true, false));

        assert!(map.allows(0x10_0000, 0x3000, false));
        assert!(
            !map.allows(0x10_0000, 0x10, true),
            "code not writable via hypercalls"
        );
        assert!(!map.allows(0x10_3000, 1, false));
        assert!(!map.allows(PDPT_ADDR, 8, true));
        assert!(!map.allows(MONITOR_PAGE, 8, false));
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
        let slot_entry = |mem: &GuestMemory, index: u64| {
            let pdpt = mem.read::<u64>(PDPT_ADDR + 4 * 8).unwrap();
            if pdpt == 0 {
                return 0;
            }
            assert_eq!(pdpt, tables::table(HIGH_PD_ADDR));
            mem.read::<u64>(HIGH_PD_ADDR + index * 8).unwrap()
        };
        let mut without = GuestMemory::new(4 << 20).unwrap();
        build(&mut without, &image(), false).unwrap();
        assert_eq!(slot_entry(&without, 0), 0);
        let mut with = GuestMemory::new(4 << 20).unwrap();
        let map = build(&mut with, &image(), true).unwrap();
        let last = (SLOTS as u64 * SLOT_SIZE) / LARGE_PAGE - 1;
        assert_eq!(
            slot_entry(&with, last),
            tables::block(WINDOW_BASE + last * LARGE_PAGE, DATA)
        );
        // Right past the last slot is nothing, or the architecture's own
        // block there (arm64's hypercall page).
        let past_addr = WINDOW_BASE + (last + 1) * LARGE_PAGE;
        let expected = tables::HIGH_BLOCKS
            .iter()
            .find(|(addr, _)| *addr == past_addr)
            .map_or(0, |&(addr, mapping)| tables::block(addr, mapping));
        assert_eq!(
            slot_entry(&with, last + 1),
            expected,
            "nothing of the window right past the last slot"
        );
        assert!(
            !map.allows(WINDOW_BASE, 8, false),
            "no hypercall reaches the window"
        );
        const { assert!(HIGH_PD_ADDR + PAGE_SIZE <= PT_ADDR) };
    }

    #[test]
    fn the_architectures_high_blocks_are_mapped_with_or_without_conduit() {
        for conduit in [false, true] {
            let mut mem = GuestMemory::new(4 << 20).unwrap();
            build(&mut mem, &image(), conduit).unwrap();
            for &(addr, mapping) in tables::HIGH_BLOCKS {
                let index = (addr % GIB) / LARGE_PAGE;
                let entry = mem.read::<u64>(HIGH_PD_ADDR + index * 8).unwrap();
                assert_eq!(tables::decode(entry), Some(mapping), "{addr:#x}");
            }
        }
    }
}
