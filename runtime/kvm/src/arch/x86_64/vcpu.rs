//! The vCPU's initial state: 64-bit long mode, CPL 3, IOPL 3, SSE on, no
//! interrupts and no IDT (so any exception is a triple fault the monitor
//! reports). Everything privileged is set from the host side; the guest
//! never runs at CPL 0.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use super::tables::{
    GDT_ADDR, GDT_LIMIT, PML4_ADDR, TSS_ADDR, TSS_LIMIT, TSS_SELECTOR, USER_CODE_SELECTOR,
    USER_DATA_SELECTOR,
};

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const EFER_NXE: u64 = 1 << 11;
/// Reserved bit 1 set, IF clear, IOPL 3. Some KVM flavours (PVM) drop IOPL
/// for user mode, so the TSS I/O bitmap opens the hypercall ports as well.
const RFLAGS: u64 = 0x2 | (3 << 12);
const MSR_IA32_TSC: u32 = 0x10;

/// Creates the VM (the default type).
pub fn create_vm(kvm: &Kvm) -> Result<VmFd, kvm_ioctls::Error> {
    kvm.create_vm()
}

/// Gives the guest the host's CPUID, as KVM supports it; returns the
/// guest's TSC frequency in kHz (the counter the guest reads).
pub fn setup(
    kvm: &Kvm,
    _vm: &VmFd,
    vcpu: &VcpuFd,
) -> Result<u32, (&'static str, kvm_ioctls::Error)> {
    let cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| ("get supported CPUID", e))?;
    vcpu.set_cpuid2(&cpuid).map_err(|e| ("set CPUID", e))?;
    vcpu.get_tsc_khz().map_err(|e| ("get TSC frequency", e))
}

pub fn set_registers(
    vcpu: &VcpuFd,
    entry: u64,
    stack_top: u64,
    boot_info: u64,
) -> Result<(), kvm_ioctls::Error> {
    let mut sregs = vcpu.get_sregs()?;
    long_mode_user(&mut sregs);
    vcpu.set_sregs(&sregs)?;
    vcpu.set_fpu(&kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    })?;
    vcpu.set_regs(&kvm_regs {
        rip: entry,
        rsp: stack_top,
        rdi: boot_info,
        rflags: RFLAGS,
        ..Default::default()
    })
}

fn long_mode_user(sregs: &mut kvm_sregs) {
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: USER_CODE_SELECTOR,
        type_: 0xb,
        present: 1,
        dpl: 3,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    };
    let data = kvm_segment {
        selector: USER_DATA_SELECTOR,
        type_: 0x3,
        db: 1,
        l: 0,
        ..code
    };
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = kvm_segment {
        base: TSS_ADDR,
        limit: TSS_LIMIT,
        selector: TSS_SELECTOR,
        type_: 0xb,
        present: 1,
        ..Default::default()
    };
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = GDT_LIMIT;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    sregs.efer = EFER_LME | EFER_LMA | EFER_NXE;
}

/// The guest's TSC now, as the guest would read it.
pub fn guest_counter(vcpu: &VcpuFd) -> Option<u64> {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_IA32_TSC,
        ..Default::default()
    }])
    .ok()?;
    match vcpu.get_msrs(&mut msrs) {
        Ok(1) => Some(msrs.as_slice()[0].data),
        _ => None,
    }
}

/// Registers and the fault address, for a crash report.
pub fn crash_state(vcpu: &VcpuFd) -> String {
    let (Ok(r), Ok(s)) = (vcpu.get_regs(), vcpu.get_sregs()) else {
        return "registers unavailable".into();
    };
    format!(
        "rip={:#018x} rsp={:#018x} rflags={:#x} cr2={:#018x}\n\
         rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n\
         rsi={:#018x} rdi={:#018x} rbp={:#018x} r8={:#018x}\n\
         r9={:#018x} r10={:#018x} r11={:#018x} r12={:#018x}\n\
         r13={:#018x} r14={:#018x} r15={:#018x} cs={:#x} ss={:#x}",
        r.rip,
        r.rsp,
        r.rflags,
        s.cr2,
        r.rax,
        r.rbx,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        r.rbp,
        r.r8,
        r.r9,
        r.r10,
        r.r11,
        r.r12,
        r.r13,
        r.r14,
        r.r15,
        s.cs.selector,
        s.ss.selector
    )
}
