//! Entry, the ABI note and the boot information.

use core::arch::global_asm;
use core::mem::offset_of;

use jitsu_abi::{layout, AbiNoteSection, BootInfo, ABI_VERSION, BOOT_INFO_MAGIC};

use crate::boot::Boot;

/// Bytes kept free for the stack at the top of guest memory.
const STACK_RESERVE: u64 = 1 << 20;

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

extern "C" fn rust_start(info: *const BootInfo) -> ! {
    // SAFETY: the monitor passes the address of a BootInfo it wrote into
    // guest memory, mapped readable for the whole run and never written by
    // the monitor again.
    let info: &'static BootInfo = unsafe { &*info };
    if info.magic != BOOT_INFO_MAGIC || info.abi_version != ABI_VERSION {
        super::hypercall::halt(70);
    }
    crate::clock::init(info.entry_tsc, info.tsc_hz);
    crate::heap::init(info.image_end, info.mem_size.saturating_sub(STACK_RESERVE));
    crate::run_main(Boot {
        cmdline: cmdline(info),
        mem_size: info.mem_size,
        net: (info.net.present != 0).then_some(info.net),
        info,
    })
}

fn cmdline(info: &BootInfo) -> &'static str {
    let len = info.cmdline_len as usize;
    if len > layout::CMDLINE_MAX || info.cmdline < layout::BOOT_INFO_ADDR {
        return "";
    }
    // SAFETY: the monitor wrote `len` bytes of command line at `cmdline`, on
    // the boot-info page, which stays mapped and is not written again.
    let bytes = unsafe { core::slice::from_raw_parts(info.cmdline as *const u8, len) };
    core::str::from_utf8(bytes).unwrap_or("")
}
