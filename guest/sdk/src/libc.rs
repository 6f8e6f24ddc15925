//! Stand-ins for libc's memory functions, which the compiler emits calls to.
//! `rep movsb` / `rep stosb` keep the compiler from recognising a loop and
//! turning it back into a call to the very function being defined.

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
