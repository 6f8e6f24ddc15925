//! x86-64: the guest runs at CPL 3 in long mode built by the monitor (GDT,
//! TSS with an I/O bitmap, 4-level page tables); a hypercall is an `out`
//! to its port; any exception is a triple fault.

pub mod exit;
pub mod seccomp;
pub mod tables;
pub mod vcpu;

/// The architecture's name in messages and reports.
pub const NAME: &str = "x86-64";
