//! Xen hypercalls through the hypercall page: Xen writes a `vmcall` or
//! `vmmcall` stub for each call at 32-byte strides into a page the guest
//! names by an MSR, so the guest needs not know which CPU vendor it runs on.

use core::arch::x86_64::__cpuid;
use core::arch::{asm, global_asm};

// Filled with int3 so that a call before `init` traps instead of sliding on.
global_asm!(
    ".pushsection .text.xen_hypercall_page, \"ax\"",
    ".balign 4096",
    ".global xen_hypercall_page",
    "xen_hypercall_page:",
    ".fill 4096, 1, 0xcc",
    ".popsection",
);

extern "C" {
    static xen_hypercall_page: [u8; 4096];
}

fn page_addr() -> u64 {
    // Only the symbol's address is taken; the page is never read here.
    core::ptr::addr_of!(xen_hypercall_page) as u64
}

/// Finds Xen's CPUID leaves and asks it to fill the hypercall page. Returns
/// false when this is not Xen (no hypercall can be made at all then).
pub(crate) fn init() -> bool {
    for base in (0x4000_0000u32..0x4001_0000).step_by(0x100) {
        // CPUID exists on every x86-64 CPU; hypervisor leaves are harmless.
        let id = __cpuid(base);
        if (id.ebx, id.ecx, id.edx) == (0x566e_6558, 0x6558_4d4d, 0x4d4d_566e) && id.eax >= base + 2
        {
            // Leaf base+2 names the hypercall MSR.
            let msr = __cpuid(base + 2).ebx;
            let page = page_addr();
            // SAFETY: writing the page's guest-physical address (identity
            // mapped) to Xen's MSR makes Xen overwrite that page of our text
            // with its stubs; nothing else lives in it.
            unsafe {
                asm!("wrmsr", in("ecx") msr, in("eax") page as u32, in("edx") (page >> 32) as u32,
                    options(nostack, preserves_flags));
            }
            return true;
        }
    }
    false
}

/// Calls hypercall `nr` with up to three arguments. Xen's debug builds
/// scribble over the argument registers, so they are all clobbered.
///
/// # Safety
/// The arguments must be what the hypercall expects; pointers must name
/// memory that stays valid (and, where Xen writes, writable) for the call.
pub(crate) unsafe fn call3(nr: usize, a1: u64, a2: u64, a3: u64) -> i64 {
    let ret: i64;
    asm!(
        "call {entry}",
        entry = in(reg) page_addr() + nr as u64 * 32,
        inlateout("rdi") a1 => _,
        inlateout("rsi") a2 => _,
        inlateout("rdx") a3 => _,
        lateout("rax") ret,
        lateout("rcx") _, lateout("r8") _, lateout("r10") _, lateout("r11") _,
    );
    ret
}
