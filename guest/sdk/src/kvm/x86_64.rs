//! x86-64: the guest runs at CPL 3; a hypercall is `out dx, eax` to the
//! call's port, whose I/O-bitmap bit the monitor cleared.

use core::arch::{asm, global_asm};
use core::mem::offset_of;

use jitsu_abi::hypercall::PORT_BASE;
use jitsu_abi::BootInfo;

// The monitor enters here at CPL 3 with RDI = &BootInfo and RSP at the top of
// guest memory. The first thing we do is record the TSC, so that the monitor
// can tell when the first guest instruction ran.
global_asm!(
    ".pushsection .text.start, \"ax\"",
    ".global _start",
    "_start:",
    "    rdtsc",
    "    shl rdx, 32",
    "    or rax, rdx",
    "    mov [rdi + {entry_counter}], rax",
    "    and rsp, -16",
    "    call {rust_start}",
    "    ud2",
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
    asm!("out dx, eax", in("dx") PORT_BASE + nr, in("eax") addr,
        options(nostack, preserves_flags));
}

/// The time stamp counter: `rdtsc` works at CPL 3 and costs no exit.
#[inline]
pub(crate) fn counter() -> u64 {
    // SAFETY: rdtsc reads a counter; CR4.TSD is clear so it is allowed at CPL 3.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// `ud2`: an exception with no handler, which the monitor sees as a triple
/// fault.
pub(super) fn fault() {
    // SAFETY: raises #UD and touches nothing.
    unsafe { asm!("ud2", options(nomem, nostack)) };
}
