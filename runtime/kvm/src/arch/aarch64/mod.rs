//! arm64: the guest starts at EL1 with the MMU and caches on over the
//! monitor's page tables, interrupts masked, FP/SIMD enabled, and the
//! monitor's exception vectors (each reports its exception with an MMIO
//! store, so a fault ends the guest instead of looping). A hypercall is a
//! 32-bit store to the hypercall page, which has no memory behind it: KVM
//! hands it over as an MMIO exit. KVM on the kernels these nodes run
//! (6.1) keeps HVC for PSCI and answers any other function itself, so MMIO
//! is the one trap that reaches the monitor everywhere.

pub mod exit;
pub mod seccomp;
pub mod tables;
pub mod vcpu;

/// The architecture's name in messages and reports.
pub const NAME: &str = "arm64";
