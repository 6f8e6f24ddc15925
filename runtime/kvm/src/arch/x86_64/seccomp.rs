//! What the shared allowlists (`crate::seccomp`) add on x86-64.

use kvm_bindings as kb;
use seccompiler::TargetArch;

use crate::seccomp::{io, ioc, ior, iow};

const fn iowr(nr: u64, size: usize) -> u64 {
    ioc(3, nr, size)
}

pub const TARGET: TargetArch = TargetArch::x86_64;

pub const KVM_GET_REGS: u64 = ior(0x81, size_of::<kb::kvm_regs>());
pub const KVM_GET_SREGS: u64 = ior(0x83, size_of::<kb::kvm_sregs>());

/// Building the vCPU: CPUID, registers, MSRs, the FPU, the TSC.
pub const KVM_REQUESTS: [u64; 13] = [
    iowr(0x05, size_of::<kb::kvm_cpuid2>()), // KVM_GET_SUPPORTED_CPUID
    io(0x47),                                // KVM_SET_TSS_ADDR
    KVM_GET_REGS,
    iow(0x82, size_of::<kb::kvm_regs>()), // KVM_SET_REGS
    KVM_GET_SREGS,
    iow(0x84, size_of::<kb::kvm_sregs>()),  // KVM_SET_SREGS
    iowr(0x88, size_of::<kb::kvm_msrs>()),  // KVM_GET_MSRS
    iow(0x89, size_of::<kb::kvm_msrs>()),   // KVM_SET_MSRS
    ior(0x8c, size_of::<kb::kvm_fpu>()),    // KVM_GET_FPU
    iow(0x8d, size_of::<kb::kvm_fpu>()),    // KVM_SET_FPU
    iow(0x90, size_of::<kb::kvm_cpuid2>()), // KVM_SET_CPUID2
    io(0xa2),                               // KVM_SET_TSC_KHZ
    io(0xa3),                               // KVM_GET_TSC_KHZ
];

/// What the vCPU thread asks of its vCPU besides KVM_RUN: the registers
/// of a crash report.
pub const VCPU_REQUESTS: [u64; 2] = [KVM_GET_REGS, KVM_GET_SREGS];

/// System calls the C library makes here that newer architectures replaced
/// by their `*at`/`p*` forms (which the shared lists have).
pub const LEGACY_SYSCALLS: [i64; 4] = [
    libc::SYS_poll,
    libc::SYS_epoll_wait,
    libc::SYS_unlink,
    libc::SYS_readlink,
];

/// The vCPU thread's share of them.
pub const VCPU_LEGACY_SYSCALLS: [i64; 1] = [libc::SYS_poll];
