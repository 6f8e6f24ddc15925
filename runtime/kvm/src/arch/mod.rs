//! Where an instruction set plugs into the KVM backend. Each folder gives
//! the same four modules, and nothing else in the crate knows which CPU it
//! runs on:
//!
//! - `vcpu`: the vCPU's set-up after `KVM_CREATE_VCPU` (CPUID on x86-64,
//!   the host's preferred target on arm64), its entry state, the guest's
//!   counter (TSC or generic timer) and the registers of a crash report;
//! - `tables`: how page-table entries encode a [`crate::layout::Mapping`],
//!   and the monitor's own page (GDT and TSS, or the exception vectors);
//! - `exit`: a VM exit decoded into a hypercall, a crash or a retry;
//! - `seccomp`: the KVM requests and system calls only this architecture has.
//!
//! The guest's side of the same seam is `guest/sdk/src/kvm/` (one file per
//! architecture there too); `ABI.md` describes both.

#[cfg(target_arch = "aarch64")]
#[path = "aarch64/mod.rs"]
mod imp;
#[cfg(target_arch = "x86_64")]
#[path = "x86_64/mod.rs"]
mod imp;

pub use imp::{exit, seccomp, tables, vcpu, NAME};

/// A VM exit, as the shared vCPU loop sees it.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// Hypercall `nr` with the bytes the guest wrote (the argument's
    /// address); the number is not checked yet.
    Hypercall { nr: u16, data: [u8; 8], len: usize },
    /// Nothing to do: the run was interrupted (a kick), go round again.
    Again,
    /// The guest cannot go on; why, in words.
    Crash(String),
}
