//! x86-64 page-table entries and the monitor's page: the GDT, and the TSS
//! whose I/O bitmap opens exactly the hypercall ports to CPL 3.

use jitsu_abi::hypercall as hc;

use crate::layout::{Mapping, MONITOR_PAGE};
use crate::memory::{GuestMemory, MemoryError};

pub const GDT_ADDR: u64 = MONITOR_PAGE;
pub const TSS_ADDR: u64 = GDT_ADDR + 0x100;
/// The TSS proper is 104 bytes; the I/O permission bitmap follows it.
const TSS_SIZE: u64 = 104;
const IO_BITMAP_BYTES: u64 = (hc::PORT_BASE as u64 + hc::PORT_WINDOW as u64).div_ceil(8);
/// Covers the bitmap and the all-ones byte the CPU wants after it.
pub const TSS_LIMIT: u32 = (TSS_SIZE + IO_BITMAP_BYTES) as u32;
/// CR3: the PML4, whose one entry points at the shared layout's PDPT.
pub const PML4_ADDR: u64 = 0x3000;

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

const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PWT: u64 = 1 << 3;
const PCD: u64 = 1 << 4;
const PS: u64 = 1 << 7;
const NX: u64 = 1 << 63;

/// An entry that points at the next level's table.
pub fn table(next: u64) -> u64 {
    next | P | RW | US
}

/// A 4 KiB page.
pub fn page(addr: u64, mapping: Mapping) -> u64 {
    addr | bits(mapping)
}

/// A 2 MiB page.
pub fn block(addr: u64, mapping: Mapping) -> u64 {
    addr | bits(mapping) | PS
}

fn bits(mapping: Mapping) -> u64 {
    match mapping {
        Mapping::Guest { write, exec } => {
            P | US | if write { RW } else { 0 } | if exec { 0 } else { NX }
        }
        // Supervisor only: CPL 3 can neither read nor write it.
        Mapping::Monitor => P | RW | NX,
        Mapping::Device => P | RW | NX | PCD | PWT,
    }
}

/// What a last-level entry (or a 2 MiB one) maps, read back.
pub fn decode(entry: u64) -> Option<Mapping> {
    if entry & P == 0 {
        return None;
    }
    if entry & US == 0 {
        let device = entry & (PCD | PWT) != 0;
        return Some(if device {
            Mapping::Device
        } else {
            Mapping::Monitor
        });
    }
    Some(Mapping::Guest {
        write: entry & RW != 0,
        exec: entry & NX == 0,
    })
}

/// The PML4 above the shared PDPT.
pub fn write_root(mem: &mut GuestMemory, pdpt: u64) -> Result<(), MemoryError> {
    mem.write(PML4_ADDR, &table(pdpt))
}

/// The 2 MiB blocks of the fifth GiB besides the conduit window: none.
pub const HIGH_BLOCKS: &[(u64, Mapping)] = &[];

/// The GDT and the TSS with its I/O bitmap.
pub fn write_monitor_page(mem: &mut GuestMemory) -> Result<(), MemoryError> {
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

    #[test]
    fn tss_descriptor_encodes_base_and_limit() {
        let (low, high) = tss_descriptor(0x1234_5678_9abc, 0x67);
        assert_eq!(low & 0xffff, 0x67);
        assert_eq!((low >> 16) & 0xff_ffff, 0x56_789abc & 0xff_ffff);
        assert_eq!((low >> 40) & 0xff, 0x89);
        assert_eq!(high, 0x1234);
    }

    #[test]
    fn entries_read_back_as_written() {
        let guest = |write, exec| Mapping::Guest { write, exec };
        for m in [
            guest(false, false),
            guest(false, true),
            guest(true, false),
            Mapping::Monitor,
            Mapping::Device,
        ] {
            assert_eq!(decode(page(0x5000, m)), Some(m));
            assert_eq!(decode(block(0x20_0000, m)), Some(m));
        }
        assert_eq!(decode(0), None);
        assert_eq!(
            block(0x20_0000, guest(true, false)),
            0x20_0000 | P | RW | US | PS | NX
        );
    }

    #[test]
    fn only_the_hypercall_ports_are_open_to_cpl_3() {
        let mut mem = GuestMemory::new(2 << 20).unwrap();
        write_monitor_page(&mut mem).unwrap();
        let bitmap = mem.slice(TSS_ADDR + TSS_SIZE, IO_BITMAP_BYTES + 1).unwrap();
        let open = |port: u16| bitmap[port as usize / 8] & (1 << (port % 8)) == 0;
        assert!((hc::PORT_BASE..hc::PORT_BASE + hc::PORT_WINDOW).all(open));
        assert!(!open(hc::PORT_BASE - 1) && !open(0x80) && !open(0x3f8));
        assert_eq!(bitmap[IO_BITMAP_BYTES as usize], 0xff, "the closing byte");
    }
}
