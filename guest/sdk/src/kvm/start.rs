//! The ABI note and the boot information; the entry code that leads here
//! is the architecture's (`arch::_start`).

use jitsu_abi::{layout, AbiNoteSection, BootInfo, ABI_VERSION, BOOT_INFO_MAGIC};

use crate::boot::Boot;

/// Bytes kept free for the stack at the top of guest memory.
const STACK_RESERVE: u64 = 1 << 20;

/// The ABI note the monitor looks for before it runs anything.
#[used]
#[link_section = ".note.jitsu"]
static ABI_NOTE: AbiNoteSection = AbiNoteSection::CURRENT;

/// Where the architecture's entry code calls in, on the monitor's stack.
pub(super) extern "C" fn rust_start(info: *const BootInfo) -> ! {
    // SAFETY: the monitor passes the address of a BootInfo it wrote into
    // guest memory, mapped readable for the whole run and never written by
    // the monitor again.
    let info: &'static BootInfo = unsafe { &*info };
    if info.magic != BOOT_INFO_MAGIC || info.abi_version != ABI_VERSION {
        super::hypercall::halt(70);
    }
    crate::clock::init(info.entry_counter, info.counter_hz);
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
