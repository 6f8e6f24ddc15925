//! PVH entry: Xen's loader starts us at the PHYS32_ENTRY note's address in
//! 32-bit protected mode, paging off, EBX = &hvm_start_info, no stack. We
//! identity-map the first 4 GiB with 2 MiB pages (RAM, and the special pages
//! Xen puts just below 4 GiB: console and XenStore rings), enter long mode,
//! turn SSE on (Rust's x86-64 code uses it) and call into Rust. Interrupts
//! stay off for good: the platform waits with `SCHEDOP_poll`.

use core::arch::global_asm;
use core::mem::{size_of, size_of_val};

use super::{hypercall, time};
use crate::platform::{console, events};
use jitsu_xen_abi::defs::*;

/// Stack for the whole run (the heap takes the rest of RAM).
const STACK_BYTES: usize = 256 * 1024;

global_asm!(
    // The note that makes Xen's loader treat this ELF as a PVH kernel.
    ".pushsection .note.Xen, \"a\", @note",
    ".balign 4",
    ".long 4, 4, {phys32_entry}",
    ".asciz \"Xen\"",
    ".long _start",
    ".popsection",

    ".pushsection .bss.xen_boot, \"aw\", @nobits",
    ".balign 4096",
    "xen_pml4: .skip 4096",
    "xen_pdpt: .skip 4096",
    "xen_pd: .skip 4 * 4096",
    "xen_stack: .skip {stack}",
    "xen_stack_top:",
    "xen_start_info: .skip 4",
    ".popsection",

    ".pushsection .data.xen_gdt, \"aw\"",
    ".balign 16",
    "xen_gdt: .quad 0, 0x00af9a000000ffff, 0x00cf92000000ffff",
    "xen_gdt_ptr: .word 3 * 8 - 1",
    "    .long xen_gdt",
    ".popsection",

    ".pushsection .text.start, \"ax\"",
    ".code32",
    ".global _start",
    "_start:",
    "    cld",
    "    movl %ebx, xen_start_info",
    // PML4[0] -> PDPT; PDPT[0..4] -> four page directories; 2048 2 MiB pages.
    "    movl $xen_pdpt + 3, xen_pml4",
    "    movl $xen_pdpt, %edi",
    "    movl $xen_pd + 3, %eax",
    "    movl $4, %ecx",
    "1:  movl %eax, (%edi)",
    "    addl $4096, %eax",
    "    addl $8, %edi",
    "    loop 1b",
    "    movl $xen_pd, %edi",
    "    movl $0x83, %eax",
    "    movl $2048, %ecx",
    "2:  movl %eax, (%edi)",
    "    addl $0x200000, %eax",
    "    addl $8, %edi",
    "    loop 2b",
    // CR4: PAE, OSFXSR, OSXMMEXCPT. CR3: the PML4. EFER: long mode.
    "    movl %cr4, %eax",
    "    orl $0x620, %eax",
    "    movl %eax, %cr4",
    "    movl $xen_pml4, %eax",
    "    movl %eax, %cr3",
    "    movl $0xc0000080, %ecx",
    "    rdmsr",
    "    orl $0x100, %eax",
    "    wrmsr",
    // CR0: paging, protection, monitor coprocessor; no FPU emulation, no TS.
    "    movl %cr0, %eax",
    "    andl $~0xc, %eax",
    "    orl $0x80000003, %eax",
    "    movl %eax, %cr0",
    "    lgdt xen_gdt_ptr",
    "    ljmp $8, $3f",
    ".code64",
    "3:  movl $0x10, %eax",
    "    movw %ax, %ds",
    "    movw %ax, %es",
    "    movw %ax, %ss",
    "    xorl %eax, %eax",
    "    movw %ax, %fs",
    "    movw %ax, %gs",
    "    leaq xen_stack_top(%rip), %rsp",
    "    rdtsc",
    "    shlq $32, %rdx",
    "    orq %rdx, %rax",
    "    movq %rax, %rsi",
    "    movl xen_start_info(%rip), %edi",
    "    call {rust_start}",
    "    ud2",
    ".popsection",
    phys32_entry = const ELFNOTE_PHYS32_ENTRY,
    stack = const STACK_BYTES,
    rust_start = sym rust_start,
    options(att_syntax),
);

extern "C" {
    /// The end of the image (linker script).
    static _end: u8;
}

/// Status for a platform that cannot even start (Xen sees a crash).
fn fail() -> ! {
    crate::platform::shutdown(SHUTDOWN_CRASH)
}

extern "C" fn rust_start(start_info: u32, entry_counter: u64) -> ! {
    if !hypercall::init() {
        // Not Xen: there is nobody to tell. Stop here.
        loop {
            // SAFETY: ud2 raises #UD; with no IDT the vCPU triple-faults.
            unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
        }
    }
    if events::init().is_err() {
        fail();
    }
    crate::clock::init(entry_counter, time::counter_hz());
    if console::init().is_err() {
        fail();
    }
    // SAFETY: Xen's loader wrote the start info at this address in RAM, and
    // nothing in the guest writes there (the heap starts past it, `memory`).
    let info: &'static HvmStartInfo = unsafe { &*(start_info as u64 as *const HvmStartInfo) };
    if info.magic != START_INFO_MAGIC {
        crate::println!("xen-pvh: bad start info magic {:#x}", info.magic);
        fail();
    }
    let (mem_size, heap_start, heap_end) = memory(info);
    crate::platform::run(cmdline(info), mem_size, (heap_start, heap_end))
}

/// Total RAM, and the heap's range: from past the image and what Xen's
/// loader put after it (start info, command line, memory map, modules) to
/// the end of that RAM range, below 4 GiB, which is all we map.
fn memory(info: &HvmStartInfo) -> (u64, u64, u64) {
    // Only the symbol's address is taken.
    let image_end = core::ptr::addr_of!(_end) as u64;
    let entries: &[HvmMemmapEntry] = if info.version >= 1 && info.memmap_paddr != 0 {
        // SAFETY: Xen's loader wrote `memmap_entries` entries at this
        // physical address in RAM, and they are never written again.
        unsafe {
            core::slice::from_raw_parts(
                info.memmap_paddr as *const HvmMemmapEntry,
                (info.memmap_entries as usize).min(128),
            )
        }
    } else {
        &[]
    };
    let mut boot_data = [
        (
            info as *const HvmStartInfo as u64,
            size_of::<HvmStartInfo>() as u64,
        ),
        (info.cmdline_paddr, cmdline(info).len() as u64 + 1),
        (info.memmap_paddr, size_of_val(entries) as u64),
        (info.modlist_paddr, info.nr_modules as u64 * 32),
    ];
    let mut heap_start = image_end;
    for (addr, len) in boot_data.iter_mut() {
        if *addr >= image_end {
            heap_start = heap_start.max(*addr + *len);
        }
    }
    let heap_start = (heap_start + 4095) & !4095;
    let mut total = 0;
    let mut heap_end = heap_start;
    for entry in entries.iter().filter(|e| e.kind == MEMMAP_RAM) {
        total += entry.size;
        let end = (entry.addr + entry.size).min(1 << 32);
        if entry.addr <= heap_start && heap_start < end {
            heap_end = end;
        }
    }
    (total, heap_start, heap_end)
}

fn cmdline(info: &HvmStartInfo) -> &'static str {
    if info.cmdline_paddr == 0 {
        return "";
    }
    let start = info.cmdline_paddr as *const u8;
    let mut len = 0;
    // SAFETY: Xen wrote a NUL-terminated command line at this address in
    // RAM (bounded here at 4 KiB), and nothing writes there afterwards.
    unsafe {
        while len < 4096 && *start.add(len) != 0 {
            len += 1;
        }
        core::str::from_utf8(core::slice::from_raw_parts(start, len)).unwrap_or("")
    }
}
