//! The vCPU's initial state on arm64: EL1 on SP_EL1, interrupts masked,
//! the MMU and caches on over the monitor's tables (so the guest's first
//! instruction already runs with normal, cacheable memory: Rust code does
//! unaligned and exclusive accesses that device memory would fault),
//! FP/SIMD open, VBAR_EL1 at the monitor's vectors. KVM initialises the
//! vCPU for the host's preferred target; no interrupt controller is made,
//! as the guest takes no interrupts.

use std::mem::offset_of;

use kvm_bindings::{
    kvm_regs, kvm_vcpu_init, user_pt_regs, KVM_REG_ARM64, KVM_REG_ARM64_SYSREG, KVM_REG_ARM_CORE,
    KVM_REG_SIZE_U64,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use super::tables::VECTORS_ADDR;
use crate::layout::PDPT_ADDR;

const fn core(offset: usize) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE as u64 | (offset / 4) as u64
}
const fn user(offset: usize) -> u64 {
    core(offset_of!(kvm_regs, regs) + offset)
}
const fn x(n: usize) -> u64 {
    user(offset_of!(user_pt_regs, regs) + n * 8)
}
const fn sys(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    KVM_REG_ARM64
        | KVM_REG_SIZE_U64
        | KVM_REG_ARM64_SYSREG as u64
        | op0 << 14
        | op1 << 11
        | crn << 7
        | crm << 3
        | op2
}

const PC: u64 = user(offset_of!(user_pt_regs, pc));
const PSTATE: u64 = user(offset_of!(user_pt_regs, pstate));
const SP_EL1: u64 = core(offset_of!(kvm_regs, sp_el1));
const ELR_EL1: u64 = core(offset_of!(kvm_regs, elr_el1));
/// `spsr[0]` is SPSR_EL1.
const SPSR_EL1: u64 = core(offset_of!(kvm_regs, spsr));
const SCTLR_EL1: u64 = sys(3, 0, 1, 0, 0);
const CPACR_EL1: u64 = sys(3, 0, 1, 0, 2);
const TTBR0_EL1: u64 = sys(3, 0, 2, 0, 0);
const TCR_EL1: u64 = sys(3, 0, 2, 0, 2);
const ESR_EL1: u64 = sys(3, 0, 5, 2, 0);
const FAR_EL1: u64 = sys(3, 0, 6, 0, 0);
const MAIR_EL1: u64 = sys(3, 0, 10, 2, 0);
const VBAR_EL1: u64 = sys(3, 0, 12, 0, 0);
/// KVM's name for the guest's virtual count (CNTVCT_EL0); its odd encoding
/// is KVM's own (`KVM_REG_ARM_TIMER_CNT`).
const TIMER_CNT: u64 = sys(3, 3, 14, 3, 2);

/// EL1h (EL1 on SP_EL1) with D, A, I and F masked.
const PSTATE_EL1H_MASKED: u64 = 0b0101 | 0xf << 6;
/// The bits that are RES1 in Armv8.0 (later fields whose 1 is the 8.0
/// behaviour), the MMU (M), data and instruction caches (C, I) and the
/// stack-alignment check (SA).
const SCTLR: u64 = 0x30d0_0800 | 1 | 1 << 2 | 1 << 3 | 1 << 12;
/// FPEN = 0b11: FP/SIMD do not trap (the compiler uses them freely).
const CPACR: u64 = 0b11 << 20;
/// 39-bit addresses from TTBR0 (T0SZ 25: the walk starts at level 1, the
/// shared PDPT), write-back inner shareable walks, 4 KiB granules, TTBR1
/// walks off, 36-bit physical addresses (the hypercall page is at 4.25 GiB).
const TCR: u64 = 25 | 0b01 << 8 | 0b01 << 10 | 0b11 << 12 | 1 << 23 | 0b10 << 30 | 0b001 << 32;
/// Attr0: normal memory, write-back, read/write-allocate; Attr1: device
/// nGnRnE (see `tables`).
const MAIR: u64 = 0xff;

/// Creates the VM with the widest guest-physical space the host offers.
pub fn create_vm(kvm: &Kvm) -> Result<VmFd, kvm_ioctls::Error> {
    kvm.create_vm()
}

/// Initialises the vCPU for the host's preferred target; returns the
/// frequency of the counter the guest reads, in kHz.
pub fn setup(
    _kvm: &Kvm,
    vm: &VmFd,
    vcpu: &VcpuFd,
) -> Result<u32, (&'static str, kvm_ioctls::Error)> {
    let mut init = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut init)
        .map_err(|e| ("get the preferred vCPU target", e))?;
    vcpu.vcpu_init(&init)
        .map_err(|e| ("initialise the vCPU", e))?;
    Ok((counter_hz() / 1000) as u32)
}

/// CNTFRQ_EL0: the generic timer's frequency, the same for the host and
/// its guests (firmware sets it once for every exception level).
fn counter_hz() -> u64 {
    let hz: u64;
    // SAFETY: reads a system register that Linux lets EL0 read; no memory
    // is touched.
    unsafe { std::arch::asm!("mrs {}, cntfrq_el0", out(reg) hz, options(nomem, nostack)) };
    hz
}

fn set(vcpu: &VcpuFd, reg: u64, value: u64) -> Result<(), kvm_ioctls::Error> {
    vcpu.set_one_reg(reg, &value.to_le_bytes()).map(|_| ())
}

fn get(vcpu: &VcpuFd, reg: u64) -> Option<u64> {
    let mut bytes = [0u8; 8];
    vcpu.get_one_reg(reg, &mut bytes).ok()?;
    Some(u64::from_le_bytes(bytes))
}

pub fn set_registers(
    vcpu: &VcpuFd,
    entry: u64,
    stack_top: u64,
    boot_info: u64,
) -> Result<(), kvm_ioctls::Error> {
    for (reg, value) in [
        (MAIR_EL1, MAIR),
        (TCR_EL1, TCR),
        (TTBR0_EL1, PDPT_ADDR),
        (CPACR_EL1, CPACR),
        (VBAR_EL1, VECTORS_ADDR),
        // Last of the system registers: the MMU goes on with all of the
        // above in place.
        (SCTLR_EL1, SCTLR),
        (PSTATE, PSTATE_EL1H_MASKED),
        (SP_EL1, stack_top),
        (x(0), boot_info),
        (PC, entry),
    ] {
        set(vcpu, reg, value)?;
    }
    Ok(())
}

/// The guest's virtual count now, as the guest would read it.
pub fn guest_counter(vcpu: &VcpuFd) -> Option<u64> {
    get(vcpu, TIMER_CNT)
}

/// Registers, the exception syndrome and the fault address, for a crash
/// report.
pub fn crash_state(vcpu: &VcpuFd) -> String {
    let reg = |id| get(vcpu, id).map_or("?".into(), |v| format!("{v:#018x}"));
    let esr = get(vcpu, ESR_EL1);
    let mut out = format!(
        "pc={} sp_el1={} pstate={}\n\
         esr_el1={} ({}) far_el1={} elr_el1={} spsr_el1={}",
        reg(PC),
        reg(SP_EL1),
        reg(PSTATE),
        reg(ESR_EL1),
        esr.map_or("?", exception_class),
        reg(FAR_EL1),
        reg(ELR_EL1),
        reg(SPSR_EL1),
    );
    for n in 0..31 {
        let sep = if n % 4 == 0 { "\n" } else { " " };
        out.push_str(&format!("{sep}x{n}={}", reg(x(n))));
    }
    out
}

/// ESR_EL1's exception class, in words.
fn exception_class(esr: u64) -> &'static str {
    match esr >> 26 & 0x3f {
        0x00 => "unknown reason: an undefined instruction",
        0x07 => "FP/SIMD access trapped",
        0x15 => "SVC",
        0x16 => "HVC",
        0x20 | 0x21 => "instruction abort",
        0x22 => "PC alignment fault",
        0x24 | 0x25 => "data abort",
        0x26 => "SP alignment fault",
        0x2f => "SError",
        0x3c => "BRK",
        _ => "another exception class",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_ids_are_the_kernels() {
        // Values from the kernel's uapi headers (arch/arm64/include/uapi/asm/kvm.h).
        assert_eq!(PC, 0x6030_0000_0010_0040);
        assert_eq!(PSTATE, 0x6030_0000_0010_0042);
        assert_eq!(SP_EL1, 0x6030_0000_0010_0044);
        assert_eq!(x(0), 0x6030_0000_0010_0000);
        assert_eq!(SCTLR_EL1, 0x6030_0000_0013_c080);
        assert_eq!(TIMER_CNT, 0x6030_0000_0013_df1a);
    }

    #[test]
    fn the_entry_state_is_el1_masked_with_the_mmu_on() {
        assert_eq!(PSTATE_EL1H_MASKED, 0x3c5);
        assert_eq!(SCTLR & 0b1101, 0b1101, "M, C, SA");
        assert_eq!(TCR & 0x3f, 25);
        assert_eq!(exception_class(0x9600_0045), "data abort");
        assert_eq!(
            exception_class(0x0200_0000),
            "unknown reason: an undefined instruction"
        );
    }
}
