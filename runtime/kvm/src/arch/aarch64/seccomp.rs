//! What the shared allowlists (`crate::seccomp`) add on arm64.

use kvm_bindings as kb;
use seccompiler::TargetArch;

use crate::seccomp::{ior, iow};

pub const TARGET: TargetArch = TargetArch::aarch64;

const KVM_GET_ONE_REG: u64 = iow(0xab, size_of::<kb::kvm_one_reg>());

/// Building the vCPU: its target and its registers, one at a time.
pub const KVM_REQUESTS: [u64; 4] = [
    iow(0xae, size_of::<kb::kvm_vcpu_init>()), // KVM_ARM_VCPU_INIT
    ior(0xaf, size_of::<kb::kvm_vcpu_init>()), // KVM_ARM_PREFERRED_TARGET
    KVM_GET_ONE_REG,
    iow(0xac, size_of::<kb::kvm_one_reg>()), // KVM_SET_ONE_REG
];

/// What the vCPU thread asks of its vCPU besides KVM_RUN: the registers
/// of a crash report.
pub const VCPU_REQUESTS: [u64; 1] = [KVM_GET_ONE_REG];

/// arm64 has only the `*at`/`p*` forms the shared lists name.
pub const LEGACY_SYSCALLS: [i64; 0] = [];
pub const VCPU_LEGACY_SYSCALLS: [i64; 0] = [];
