//! Stand-ins for libc's memory functions, which the compiler emits calls
//! to: `memcpy`, `memmove` and `memset` in each architecture's assembly
//! (which keeps the compiler from recognising a loop and turning it back
//! into a call to the very function being defined), the rest shared.

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

/// `rep movsb` / `rep stosb`: short, and fast on every CPU with ERMSB.
#[cfg(target_arch = "x86_64")]
mod x86_64 {
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
}

/// Sixteen bytes a step with `ldp`/`stp` (unaligned accesses are fine in
/// normal memory, which is all the guest has), then bytes. The functions
/// are whole in assembly, so the compiler never sees a loop it could turn
/// back into a call to themselves.
#[cfg(target_arch = "aarch64")]
mod aarch64 {
    core::arch::global_asm!(
        ".pushsection .text.jitsu_libc, \"ax\"",
        ".global memcpy",
        ".type memcpy, %function",
        "memcpy:",
        "    mov x3, x0",
        "    cmp x2, #16",
        "    b.lo 2f",
        "1:  ldp x4, x5, [x1], #16",
        "    stp x4, x5, [x3], #16",
        "    sub x2, x2, #16",
        "    cmp x2, #16",
        "    b.hs 1b",
        "2:  cbz x2, 4f",
        "3:  ldrb w4, [x1], #1",
        "    strb w4, [x3], #1",
        "    subs x2, x2, #1",
        "    b.ne 3b",
        "4:  ret",
        // Forwards unless the destination starts inside the source.
        ".global memmove",
        ".type memmove, %function",
        "memmove:",
        "    sub x3, x0, x1",
        "    cmp x3, x2",
        "    b.hs memcpy",
        "    add x1, x1, x2",
        "    add x3, x0, x2",
        "5:  cbz x2, 6f",
        "    ldrb w4, [x1, #-1]!",
        "    strb w4, [x3, #-1]!",
        "    sub x2, x2, #1",
        "    b 5b",
        "6:  ret",
        ".global memset",
        ".type memset, %function",
        "memset:",
        "    mov x3, x0",
        "    and w1, w1, #0xff",
        "    orr w1, w1, w1, lsl #8",
        "    orr w1, w1, w1, lsl #16",
        "    orr x1, x1, x1, lsl #32",
        "    cmp x2, #16",
        "    b.lo 8f",
        "7:  stp x1, x1, [x3], #16",
        "    sub x2, x2, #16",
        "    cmp x2, #16",
        "    b.hs 7b",
        "8:  cbz x2, 10f",
        "9:  strb w1, [x3], #1",
        "    subs x2, x2, #1",
        "    b.ne 9b",
        "10: ret",
        ".popsection",
    );
}
