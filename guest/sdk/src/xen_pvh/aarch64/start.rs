//! arm64 entry. libxl loads the image at the start of RAM plus the header's
//! `text_offset` (0) and enters its first byte at EL1h with the MMU and
//! caches off, interrupts masked and x0 = the device tree's address. The
//! entry code zeroes .bss, turns FP/SIMD on (Rust's code uses it), points
//! VBAR at vectors that report any exception, maps the low 4 GiB, turns
//! the MMU and caches on and calls into Rust.
//!
//! The map, one table of 1 GiB blocks and one of 2 MiB blocks for the first
//! GiB: device memory below `NORMAL_FROM` (the GIC and the rest of Xen's
//! emulated devices), Normal write-back memory from there up (the grant
//! table's region, Xen's console and XenStore pages, RAM, and the window
//! where Conduit maps its peers' pages). Shared pages must be cacheable, as
//! dom0 maps them, or the two sides would not see each other's writes. The
//! map is fixed (it is made before anything can read the device tree);
//! `rust_start` checks that the tree's layout agrees with it.

use core::arch::global_asm;

use super::{gic, time};
use crate::platform::{console, events, grant, shutdown};
use jitsu_xen_abi::defs::arm64::{IMAGE_MAGIC, IMAGE_MAGIC_OFFSET};
use jitsu_xen_abi::defs::SHUTDOWN_CRASH;
use jitsu_xen_abi::fdt;

/// Stack for the whole run (the heap takes the rest of RAM).
const STACK_BYTES: usize = 256 * 1024;
/// Where Normal memory starts in the map: Xen's layout puts the grant
/// table's region (then its magic pages, then RAM) here, and only devices
/// below.
const NORMAL_FROM: u64 = 0x3800_0000;
/// Block descriptors: valid block, AF, inner shareable, MAIR index 1
/// (Normal write-back) or 0 (Device-nGnRnE, never executable).
const NORMAL_BLOCK: u64 = 0x705;
const DEVICE_BLOCK: u64 = 0x401 | 3 << 53;
/// MAIR_EL1: index 0 Device-nGnRnE, index 1 Normal write-back.
const MAIR: u64 = 0xff00;
/// TCR_EL1: T0SZ 32 (a 4 GiB space, walks start at level 1), write-back
/// inner shareable walks, 4 KiB granule, no TTBR1 walks, 32-bit PA.
const TCR: u64 = 32 | 1 << 8 | 1 << 10 | 3 << 12 | 1 << 23;
/// SCTLR_EL1: M, C, I on.
const SCTLR_ON: u64 = 1 | 1 << 2 | 1 << 12;
/// Largest device tree taken (libxl's are a few KiB).
const MAX_DTB: usize = 2 << 20;

const _: () = assert!(IMAGE_MAGIC_OFFSET == 0x38);

global_asm!(
    // The arm64 Image header: a branch over it, the load offset, the size
    // the image takes in memory (.bss included; the linker script's
    // `__image_size`), flags (little-endian, 4 KiB pages), the magic.
    ".pushsection .text.start, \"ax\"",
    ".global _start",
    "_start:",
    "    b 1f",
    "    .long 0",
    "    .quad 0",
    "    .quad __image_size",
    "    .quad 2",
    "    .quad 0, 0, 0",
    "    .long {magic}",
    "    .long 0",
    "1:  mov x19, x0",
    "    isb",
    "    mrs x20, cntvct_el0",
    // .bss: with the MMU off these are plain stores to RAM.
    "    adrp x1, __bss_start",
    "    add x1, x1, :lo12:__bss_start",
    "    adrp x2, _end",
    "    add x2, x2, :lo12:_end",
    "2:  cmp x1, x2",
    "    b.hs 3f",
    "    str xzr, [x1], #8",
    "    b 2b",
    "3:  mov x1, #(3 << 20)",
    "    msr cpacr_el1, x1",
    "    isb",
    "    adrp x1, xen_stack_top",
    "    add x1, x1, :lo12:xen_stack_top",
    "    mov sp, x1",
    "    adrp x1, xen_vectors",
    "    add x1, x1, :lo12:xen_vectors",
    "    msr vbar_el1, x1",
    // Level 1: entry 0 -> the level 2 table, entries 1-3 -> 1 GiB blocks.
    "    adrp x1, xen_l1",
    "    adrp x2, xen_l2",
    "    orr x3, x2, #3",
    "    str x3, [x1]",
    "    mov x5, #{normal}",
    "    mov x4, #1",
    "4:  lsl x3, x4, #30",
    "    orr x3, x3, x5",
    "    str x3, [x1, x4, lsl #3]",
    "    add x4, x4, #1",
    "    cmp x4, #4",
    "    b.lo 4b",
    // Level 2: 512 blocks of 2 MiB, device below NORMAL_FROM.
    "    mov x6, #{device_low}",
    "    movk x6, #{device_high}, lsl #48",
    "    mov x4, #0",
    "5:  lsl x3, x4, #21",
    "    cmp x4, #{first_normal}",
    "    csel x7, x6, x5, lo",
    "    orr x3, x3, x7",
    "    str x3, [x2, x4, lsl #3]",
    "    add x4, x4, #1",
    "    cmp x4, #512",
    "    b.lo 5b",
    "    mov x3, #{mair}",
    "    msr mair_el1, x3",
    "    mov x3, #{tcr_low}",
    "    movk x3, #{tcr_high}, lsl #16",
    "    msr tcr_el1, x3",
    "    msr ttbr0_el1, x1",
    "    dsb ish",
    "    tlbi vmalle1",
    "    dsb ish",
    "    isb",
    "    mrs x3, sctlr_el1",
    "    mov x4, #{sctlr_on}",
    "    orr x3, x3, x4",
    // No alignment faults: Rust's code makes unaligned accesses.
    "    bic x3, x3, #2",
    "    msr sctlr_el1, x3",
    "    isb",
    "    mov x0, x19",
    "    mov x1, x20",
    "    bl {rust_start}",
    "    udf #0",

    // Every exception is a fault here (interrupts stay masked): report
    // which vector, ESR, ELR and FAR.
    ".balign 2048",
    "xen_vectors:",
    ".irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15",
    ".balign 128",
    "    mov x0, #\\n",
    "    b xen_exception",
    ".endr",
    "xen_exception:",
    "    mrs x1, esr_el1",
    "    mrs x2, elr_el1",
    "    mrs x3, far_el1",
    "    bl {rust_exception}",
    "    udf #0",
    ".popsection",

    ".pushsection .bss.xen_boot, \"aw\", @nobits",
    ".balign 4096",
    "xen_l1: .skip 4096",
    "xen_l2: .skip 4096",
    "xen_stack: .skip {stack}",
    "xen_stack_top:",
    ".popsection",
    magic = const IMAGE_MAGIC,
    normal = const NORMAL_BLOCK,
    device_low = const DEVICE_BLOCK & 0xffff,
    device_high = const DEVICE_BLOCK >> 48,
    first_normal = const NORMAL_FROM >> 21,
    mair = const MAIR,
    tcr_low = const TCR & 0xffff,
    tcr_high = const TCR >> 16,
    sctlr_on = const SCTLR_ON,
    stack = const STACK_BYTES,
    rust_start = sym rust_start,
    rust_exception = sym rust_exception,
);

extern "C" {
    /// The end of the image, .bss included (linker script).
    static _end: u8;
}

/// Status for a platform that cannot start (Xen sees a crash).
fn fail() -> ! {
    shutdown(SHUTDOWN_CRASH)
}

const VECTORS: [&str; 4] = [
    "from EL1 with SP_EL0",
    "from EL1",
    "from EL0 (64-bit)",
    "from EL0 (32-bit)",
];
const KINDS: [&str; 4] = ["synchronous", "IRQ", "FIQ", "SError"];

extern "C" fn rust_exception(vector: u64, esr: u64, elr: u64, far: u64) -> ! {
    let (from, kind) = (vector as usize / 4 % 4, vector as usize % 4);
    crate::println!(
        "xen-arm64: {} exception {}: ESR {esr:#x} (class {:#x}) ELR {elr:#x} FAR {far:#x}",
        KINDS[kind],
        VECTORS[from],
        esr >> 26
    );
    console::drain();
    fail()
}

/// Reads libxl's device tree at `addr`, which lies in RAM.
fn layout(addr: u64) -> Result<fdt::GuestLayout<'static>, fdt::FdtError> {
    if addr == 0 || !addr.is_multiple_of(8) {
        return Err(fdt::FdtError::Header);
    }
    // SAFETY: Xen's loader put the tree at `addr` in the domain's RAM
    // (mapped Normal), past the image; its header is read first and the
    // whole is bounded by its own size and MAX_DTB. Nothing writes there:
    // the heap is placed around it (`heap`).
    let header = unsafe { core::slice::from_raw_parts(addr as *const u8, 40) };
    let size = fdt::total_size(header).ok_or(fdt::FdtError::Header)?;
    if size > MAX_DTB {
        return Err(fdt::FdtError::Header);
    }
    // SAFETY: as above, for the size the header gives.
    fdt::guest_layout(unsafe { core::slice::from_raw_parts(addr as *const u8, size) })
}

/// The device tree's layout must agree with the fixed map.
fn check_map(layout: &fdt::GuestLayout) -> Result<(), &'static str> {
    let (ram, ram_size) = layout.ram;
    if layout.gicd >= NORMAL_FROM || layout.gicr >= NORMAL_FROM {
        return Err("the GIC lies in the map's Normal memory");
    }
    if layout.grant_table.0 < NORMAL_FROM || ram < NORMAL_FROM {
        return Err("the grant table's region or RAM lies in the map's device memory");
    }
    if ram.saturating_add(ram_size) > 1 << 32 {
        return Err("RAM reaches past the 4 GiB the map covers");
    }
    if layout.grant_table.1 < grant::FRAMES as u64 * 4096 {
        return Err("the grant table's region is too small");
    }
    Ok(())
}

/// The heap: the larger stretch of RAM past the image, on either side of
/// the device tree (libxl puts it 128 MiB into RAM, or at the top of a
/// smaller domain's RAM).
fn heap(ram: (u64, u64), dtb: (u64, u64)) -> (u64, u64) {
    // Only the symbol's address is taken.
    let image_end = core::ptr::addr_of!(_end) as u64;
    let start = (image_end + 4095) & !4095;
    let end = ram.0 + ram.1;
    let dtb_end = (dtb.0 + dtb.1 + 4095) & !4095;
    if dtb.0 < start || dtb.0 >= end {
        return (start, end);
    }
    let below = (start, dtb.0 & !4095);
    let above = (dtb_end.min(end), end);
    if below.1 - below.0 >= above.1 - above.0 {
        below
    } else {
        above
    }
}

extern "C" fn rust_start(dtb: u64, entry_counter: u64) -> ! {
    if events::init().is_err() {
        fail();
    }
    crate::clock::init(entry_counter, time::counter_hz());
    if console::init().is_err() {
        fail();
    }
    let layout = match layout(dtb) {
        Ok(layout) => layout,
        Err(err) => {
            crate::println!("xen-arm64: device tree at {dtb:#x}: {err}");
            fail();
        }
    };
    if let Err(err) = check_map(&layout) {
        crate::println!("xen-arm64: {err}");
        fail();
    }
    // SAFETY: the GIC's frames come from the tree and lie in the map's
    // device memory (`check_map`).
    unsafe {
        gic::init(
            layout.gicd,
            layout.gicr,
            &[layout.event_irq, layout.vtimer_irq],
        )
    };
    grant::place_at(layout.grant_table.0);
    let dtb_size = fdt::total_size(
        // SAFETY: read and checked by `layout` above.
        unsafe { core::slice::from_raw_parts(dtb as *const u8, 40) },
    )
    .unwrap_or(0) as u64;
    let heap = heap(layout.ram, (dtb, dtb_size));
    crate::platform::run(layout.bootargs, layout.ram.1, heap)
}
