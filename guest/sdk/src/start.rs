//! Entry, the ABI note, panics, and the few C symbols the compiler expects.

use core::arch::global_asm;
use core::mem::offset_of;

use jitsu_abi::{AbiNoteSection, BootInfo};

use crate::boot::Boot;

/// The ABI note the monitor looks for before it runs anything.
#[used]
#[link_section = ".note.jitsu"]
static ABI_NOTE: AbiNoteSection = AbiNoteSection::CURRENT;

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
    "    mov [rdi + {entry_tsc}], rax",
    "    and rsp, -16",
    "    call {rust_start}",
    "    ud2",
    ".popsection",
    entry_tsc = const offset_of!(BootInfo, entry_tsc),
    rust_start = sym rust_start,
);

extern "Rust" {
    /// Defined by the guest through `jitsu_sdk::entry!`.
    fn __jitsu_main(boot: &Boot) -> i32;
}

extern "C" fn rust_start(info: *const BootInfo) -> ! {
    // SAFETY: the monitor passes the address of a BootInfo it wrote into
    // guest memory, mapped readable for the whole run and never written by
    // the monitor again.
    let info: &'static BootInfo = unsafe { &*info };
    let boot = Boot::init(info);
    // SAFETY: `entry!` defines this symbol with exactly this signature.
    let status = unsafe { __jitsu_main(&boot) };
    crate::exit(status)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    crate::println!("panic: {info}");
    crate::hypercall::halt(101)
}

// Stand-ins for libc's memory functions, which the compiler emits calls to.
// `rep movsb` / `rep stosb` keep the compiler from recognising a loop and
// turning it back into a call to the very function being defined.

/// # Safety
/// As C's `memcpy`.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    core::arch::asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _,
        inout("rsi") src => _, options(nostack, preserves_flags));
    dest
}

/// # Safety
/// As C's `memmove`.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // No harmful overlap going forwards.
        memcpy(dest, src, n)
    } else {
        // Copy backwards: direction flag set for the copy, cleared after.
        core::arch::asm!("std", "rep movsb", "cld",
            inout("rcx") n => _, inout("rdi") dest.add(n).wrapping_sub(1) => _,
            inout("rsi") src.add(n).wrapping_sub(1) => _, options(nostack));
        dest
    }
}

/// # Safety
/// As C's `memset`.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    core::arch::asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _,
        in("al") c as u8, options(nostack, preserves_flags));
    dest
}

/// # Safety
/// As C's `memcmp`.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        let (x, y) = (*a.add(i), *b.add(i));
        if x != y {
            return x as i32 - y as i32;
        }
    }
    0
}

/// # Safety
/// As C's `bcmp`.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    memcmp(a, b, n)
}

/// The prebuilt `core` was compiled with unwinding; with `panic = "abort"`
/// nothing unwinds, but a non-LTO link still wants the symbol.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
