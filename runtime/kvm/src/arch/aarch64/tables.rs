//! arm64 translation-table entries (4 KiB granule, stage 1, EL1&0) and the
//! monitor's page: the exception vectors.
//!
//! The guest runs at EL1 and could rewrite all of this; these tables are
//! its starting state, not a wall. What confines an arm64 guest is KVM's
//! stage 2 (memory slots: guest memory, channels, nothing else) and the
//! monitor's checks of every address a hypercall names.

use jitsu_abi::hypercall::{MMIO_BASE, MMIO_EXCEPTION};

use crate::layout::{Mapping, MONITOR_PAGE};
use crate::memory::{GuestMemory, MemoryError};

/// Bits [1:0]: a table (levels 1–2) or a page (level 3) is 0b11, a block
/// (levels 1–2) 0b01.
const VALID: u64 = 1;
const TABLE_OR_PAGE: u64 = 1 << 1;
/// AttrIndx into MAIR_EL1 (see `vcpu::MAIR`): 0 normal write-back, 1 device.
const ATTR_NORMAL: u64 = 0 << 2;
const ATTR_DEVICE: u64 = 1 << 2;
/// AP[2]: read-only (AP[1] stays 0: nothing is reachable from EL0).
const READ_ONLY: u64 = 1 << 7;
const INNER_SHAREABLE: u64 = 3 << 8;
/// The access flag, set up front: nothing here manages it.
const AF: u64 = 1 << 10;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;
/// One of the bits the architecture leaves to software: marks the
/// monitor's page, which the MMU otherwise treats as read-only code.
const MONITOR: u64 = 1 << 55;

/// An entry that points at the next level's table.
pub fn table(next: u64) -> u64 {
    next | VALID | TABLE_OR_PAGE
}

/// A 4 KiB page (level 3).
pub fn page(addr: u64, mapping: Mapping) -> u64 {
    addr | bits(mapping) | TABLE_OR_PAGE
}

/// A 2 MiB block (level 2).
pub fn block(addr: u64, mapping: Mapping) -> u64 {
    addr | bits(mapping)
}

fn bits(mapping: Mapping) -> u64 {
    let normal = VALID | ATTR_NORMAL | INNER_SHAREABLE | AF | UXN;
    match mapping {
        Mapping::Guest { write, exec } => {
            normal | if write { 0 } else { READ_ONLY } | if exec { 0 } else { PXN }
        }
        // The vectors: code the guest may run but not change.
        Mapping::Monitor => normal | READ_ONLY | MONITOR,
        Mapping::Device => VALID | ATTR_DEVICE | AF | PXN | UXN,
    }
}

/// What a last-level entry (or a block) maps, read back.
pub fn decode(entry: u64) -> Option<Mapping> {
    if entry & VALID == 0 {
        return None;
    }
    let write = entry & READ_ONLY == 0;
    let exec = entry & PXN == 0;
    Some(if entry & ATTR_DEVICE != 0 {
        Mapping::Device
    } else if entry & MONITOR != 0 {
        Mapping::Monitor
    } else {
        Mapping::Guest { write, exec }
    })
}

/// TTBR0_EL1 points straight at the shared PDPT (level 1): nothing above it.
pub fn write_root(_mem: &mut GuestMemory, _pdpt: u64) -> Result<(), MemoryError> {
    Ok(())
}

/// The hypercall page (with the vectors' report addresses), as device
/// memory in the fifth GiB.
pub const HIGH_BLOCKS: &[(u64, Mapping)] = &[(MMIO_BASE, Mapping::Device)];

/// VBAR_EL1: the vectors fill the first 2 KiB of the monitor's page.
pub const VECTORS_ADDR: u64 = MONITOR_PAGE;
const VECTOR_BYTES: u64 = 0x80;

/// The 16 exception vectors. Vector `n` stores to `MMIO_EXCEPTION + 8 n`,
/// which exits to the monitor (the exit says which vector; ESR_EL1,
/// FAR_EL1 and ELR_EL1 say what and where), then branches to itself. It
/// uses x17 (IP1, a scratch register) and no stack, so it works whatever
/// state the guest was in.
pub fn write_monitor_page(mem: &mut GuestMemory) -> Result<(), MemoryError> {
    for n in 0..16 {
        let code = vector(MMIO_EXCEPTION + n * 8);
        let bytes: Vec<u8> = code.iter().flat_map(|i| i.to_le_bytes()).collect();
        mem.slice_mut(VECTORS_ADDR + n * VECTOR_BYTES, bytes.len() as u64)?
            .copy_from_slice(&bytes);
    }
    Ok(())
}

const X17: u32 = 17;
const XZR: u32 = 31;

fn vector(report: u64) -> [u32; 5] {
    let chunk = |shift: u32| ((report >> shift) & 0xffff) as u32;
    debug_assert!(report >> 48 == 0);
    [
        movz(X17, chunk(0), 0),
        movk(X17, chunk(16), 1),
        movk(X17, chunk(32), 2),
        str_w(XZR, X17),
        0x1400_0000, // b .
    ]
}

/// MOVZ Xd, #imm16, LSL #(16 hw)
fn movz(rd: u32, imm16: u32, hw: u32) -> u32 {
    0xd280_0000 | hw << 21 | imm16 << 5 | rd
}

/// MOVK Xd, #imm16, LSL #(16 hw)
fn movk(rd: u32, imm16: u32, hw: u32) -> u32 {
    0xf280_0000 | hw << 21 | imm16 << 5 | rd
}

/// STR Wt, [Xn]: a plain store, which KVM can decode as MMIO.
fn str_w(rt: u32, rn: u32) -> u32 {
    0xb900_0000 | rn << 5 | rt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_back_as_written() {
        let guest = |write, exec| Mapping::Guest { write, exec };
        for m in [guest(false, false), guest(false, true), guest(true, false)] {
            assert_eq!(decode(page(0x10_0000, m)), Some(m));
            assert_eq!(decode(block(0x20_0000, m)), Some(m));
        }
        assert_eq!(
            decode(page(MONITOR_PAGE, Mapping::Monitor)),
            Some(Mapping::Monitor)
        );
        assert_eq!(
            decode(block(MMIO_BASE, Mapping::Device)),
            Some(Mapping::Device)
        );
        assert_eq!(decode(0), None);
        assert_eq!(table(0x5000) & 3, 3);
        assert_eq!(block(0x20_0000, guest(true, false)) & 3, 1, "a block");
        assert_eq!(page(0x1000, guest(true, false)) & 3, 3, "a page");
    }

    #[test]
    fn nothing_is_writable_and_executable_or_reachable_from_el0() {
        for m in [
            Mapping::Guest {
                write: true,
                exec: false,
            },
            Mapping::Guest {
                write: false,
                exec: true,
            },
            Mapping::Monitor,
            Mapping::Device,
        ] {
            let e = page(0x1000, m);
            assert!(e & READ_ONLY != 0 || e & PXN != 0, "{m:?}: W^X");
            assert!(e & UXN != 0 && e & (1 << 6) == 0, "{m:?}: EL0 has nothing");
            assert!(e & AF != 0);
        }
    }

    #[test]
    fn the_vectors_encode_their_report_address() {
        // movz x17, #0x1000; movk x17, #0x1000, lsl 16; movk x17, #0x1, lsl 32;
        // str wzr, [x17]; b .  (as an assembler writes them)
        assert_eq!(
            vector(0x1_1000_1000),
            [
                0xd282_0011,
                0xf2a2_0011,
                0xf2c0_0031,
                0xb900_023f,
                0x1400_0000
            ]
        );
        let mut mem = GuestMemory::new(2 << 20).unwrap();
        write_monitor_page(&mut mem).unwrap();
        let last = VECTORS_ADDR + 15 * VECTOR_BYTES;
        let bytes = mem.slice(last, 4).unwrap();
        let first_word = u32::from_le_bytes(bytes.try_into().unwrap());
        assert_eq!(
            first_word,
            movz(X17, ((MMIO_EXCEPTION + 15 * 8) & 0xffff) as u32, 0)
        );
    }
}
