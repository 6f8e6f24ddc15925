//! Jitsu's unikernel runtime: validates a unikernel ELF, builds a KVM VM for
//! it from the host side (page tables, GDT, CPL 3 long mode), serves its
//! hypercalls on a seccomp-confined vCPU thread, and moves its frames to and
//! from a TAP. The ABI it implements is described in `runtime/ABI.md`.

pub mod boot_info;
pub mod clock;
pub mod cpu;
pub mod devices;
pub mod elf;
pub mod hypercall;
pub mod layout;
pub mod lazy;
pub mod memory;
pub mod report;
pub mod seccomp;
pub mod stop;
mod vcpu;
pub mod vm;

pub use report::{Outcome, RunReport, Timings, EXIT_GUEST_FAULT, EXIT_SETUP_FAILED};
pub use vm::{NetSetup, ParkedVm, RunningVm, Vm, VmConfig, VmError};
