//! arm64: the guest runs at EL1 with the MMU on over the monitor's tables;
//! a hypercall is a 32-bit store of the argument's address to the call's
//! slot of the hypercall page (device memory with nothing behind it, so
//! KVM exits to the monitor with the store's address and value).

use core::arch::{asm, global_asm};
use core::mem::offset_of;

use jitsu_abi::hypercall::{MMIO_BASE, MMIO_STRIDE};
use jitsu_abi::BootInfo;

// The monitor enters here at EL1 with x0 = &BootInfo and SP at the top of
// guest memory. The first thing we do is record the virtual counter (after
// an ISB, so the read is not hoisted before entry), so that the monitor can
// tell when the first guest instruction ran.
global_asm!(
    ".pushsection .text.start, \"ax\"",
    ".global _start",
    "_start:",
    "    isb",
    "    mrs x1, cntvct_el0",
    "    str x1, [x0, #{entry_counter}]",
    "    bl {rust_start}",
    "    udf #0",
    ".popsection",
    entry_counter = const offset_of!(BootInfo, entry_counter),
    rust_start = sym super::start::rust_start,
);

/// Traps to the monitor with hypercall `nr` and its argument's address.
///
/// # Safety
/// The monitor reads and writes the structure at `addr` (and the buffers
/// it names) if it is the guest's: the caller must own them.
#[inline(always)]
pub(super) unsafe fn trap(nr: u16, addr: u32) {
    let slot = MMIO_BASE + nr as u64 * MMIO_STRIDE;
    // A plain `str` (no writeback, no pair): the form KVM can decode. The
    // argument's earlier stores need no barrier: the monitor reads them on
    // the same CPU, after the exit this store causes.
    asm!("str {addr:w}, [{slot}]", addr = in(reg) addr, slot = in(reg) slot,
        options(nostack, preserves_flags));
}

/// CNTVCT_EL0, the generic timer's virtual count: readable at EL1 without
/// an exit; its frequency is in the boot info.
#[inline]
pub(crate) fn counter() -> u64 {
    let count: u64;
    // SAFETY: reads a system register; the ISB keeps the read in program
    // order, as a time stamp needs.
    unsafe { asm!("isb", "mrs {}, cntvct_el0", out(reg) count, options(nomem, nostack)) };
    count
}

/// `udf #0`: an undefined instruction, which the monitor's vectors report.
pub(super) fn fault() {
    // SAFETY: raises an exception and touches nothing.
    unsafe { asm!("udf #0", options(nomem, nostack)) };
}
