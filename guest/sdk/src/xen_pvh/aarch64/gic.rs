//! The least of a GICv3 that makes `wfi` return when Xen has an interrupt
//! for us: the event channel upcall and the virtual timer enabled at the
//! redistributor, group 1 on, every priority let through. Interrupts stay
//! masked in PSTATE, so none is ever taken: Xen's `wfi` handling wakes the
//! vCPU for an enabled, pending interrupt whatever PSTATE says, and the
//! waiter acknowledges what is pending by reading IAR (`ack_all`).

use core::arch::asm;

const GICD_CTLR: u64 = 0x0;
const GICD_CTLR_ENABLE_G1A: u32 = 1 << 1;
const GICD_CTLR_ARE_NS: u32 = 1 << 4;
const GICR_WAKER: u64 = 0x14;
/// The redistributor's second frame holds the SGI/PPI registers.
const GICR_SGI_FRAME: u64 = 0x1_0000;
const GICR_IGROUPR0: u64 = 0x80;
const GICR_ISENABLER0: u64 = 0x100;
/// IAR values from here up are special (1023: nothing pending).
const SPECIAL_INTIDS: u64 = 1020;

/// A plain 32-bit store. Xen emulates the GIC from the trap's syndrome,
/// which describes only simple loads and stores: the compiler's choice for
/// a volatile write (one with writeback, say) would be refused.
///
/// # Safety
/// `addr` must be a GIC register mapped as device memory.
unsafe fn write32(addr: u64, value: u32) {
    asm!("str {v:w}, [{a}]", v = in(reg) value, a = in(reg) addr, options(nostack, preserves_flags));
}

/// Enables `ppis` (interrupt IDs 16–31) on this vCPU's redistributor.
///
/// # Safety
/// `gicd` and `gicr` must be the distributor and this vCPU's redistributor
/// from the device tree, mapped as device memory.
pub(super) unsafe fn init(gicd: u64, gicr: u64, ppis: &[u32]) {
    let mask = ppis
        .iter()
        .filter(|&&irq| (16..32).contains(&irq))
        .fold(0u32, |m, &irq| m | 1 << irq);
    write32(gicd + GICD_CTLR, GICD_CTLR_ARE_NS | GICD_CTLR_ENABLE_G1A);
    write32(gicr + GICR_WAKER, 0);
    write32(gicr + GICR_SGI_FRAME + GICR_IGROUPR0, u32::MAX);
    write32(gicr + GICR_SGI_FRAME + GICR_ISENABLER0, mask);
    // ICC_SRE_EL1.SRE (system register interface), ICC_PMR_EL1 (let every
    // priority through), ICC_IGRPEN1_EL1 (group 1 on).
    asm!(
        "mrs {t}, S3_0_C12_C12_5",
        "orr {t}, {t}, #1",
        "msr S3_0_C12_C12_5, {t}",
        "isb",
        "mov {t}, #0xff",
        "msr S3_0_C4_C6_0, {t}",
        "mov {t}, #1",
        "msr S3_0_C12_C12_7, {t}",
        "isb",
        t = out(reg) _,
        options(nostack),
    );
}

/// Acknowledges and ends every pending interrupt (the waiter re-reads the
/// state they stand for: event channel bits, the clock).
pub(super) fn ack_all() {
    loop {
        let iar: u64;
        // SAFETY: reading ICC_IAR1_EL1 acknowledges the highest pending
        // group 1 interrupt; writing its ID to ICC_EOIR1_EL1 ends it. Both
        // are the CPU interface's registers, enabled by `init`.
        unsafe {
            asm!("mrs {}, S3_0_C12_C12_0", out(reg) iar, options(nomem, nostack));
            if iar & 0xff_ffff >= SPECIAL_INTIDS {
                return;
            }
            asm!("msr S3_0_C12_C12_1, {}", "isb", in(reg) iar, options(nomem, nostack));
        }
    }
}
