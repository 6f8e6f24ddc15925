//! Xen hypercalls on arm64: `hvc #0xEA1` with the call's number in x16 and
//! its arguments in x0–x4; the result comes back in x0.

use core::arch::asm;

use jitsu_xen_abi::defs::arm64::HYPERCALL_IMM;

/// Calls hypercall `nr` with up to three arguments. Xen's debug builds
/// scribble over the argument registers and x16, so they are clobbered.
///
/// # Safety
/// The arguments must be what the hypercall expects; pointers must name
/// memory that stays valid (and, where Xen writes, writable) for the call.
pub(crate) unsafe fn call3(nr: usize, a1: u64, a2: u64, a3: u64) -> i64 {
    let ret: i64;
    asm!(
        "hvc #{imm}",
        imm = const HYPERCALL_IMM,
        inlateout("x0") a1 as i64 => ret,
        inlateout("x1") a2 => _,
        inlateout("x2") a3 => _,
        lateout("x3") _,
        lateout("x4") _,
        inlateout("x16") nr => _,
        options(nostack),
    );
    ret
}
