//! How a domain ended, in the runtime's terms.

use std::time::Duration;

use jitsu_runtime::{GuestReport, EXIT_GUEST_FAULT};

use crate::toolstack::Registers;

#[derive(Debug)]
pub enum Outcome {
    /// Powered off, with the status a Jitsu guest left in `data/exit-status`
    /// (0 for a guest that leaves none, as a stock kernel does).
    Exited(u8),
    /// Asked to reboot: a unikernel has nothing to reboot into, so it ends.
    Rebooted,
    /// Crashed (a triple fault, a panic the kernel reports to Xen) or
    /// another shutdown that is not a clean end.
    Crashed {
        reason: &'static str,
        registers: Option<Registers>,
    },
    /// Stopped by the monitor (a signal).
    Stopped,
    /// Destroyed by someone else while it ran.
    Vanished,
}

#[derive(Debug)]
pub struct Report {
    pub outcome: Outcome,
    pub created_to_unpaused: Option<Duration>,
    pub unpaused_to_console: Option<Duration>,
}

impl GuestReport for Report {
    fn was_stopped(&self) -> bool {
        matches!(self.outcome, Outcome::Stopped)
    }

    fn exit_code(&self) -> u8 {
        match self.outcome {
            Outcome::Exited(status) => status,
            Outcome::Rebooted => 0,
            Outcome::Crashed { .. } | Outcome::Vanished => EXIT_GUEST_FAULT as u8,
            Outcome::Stopped => 128 + libc::SIGTERM as u8,
        }
    }

    fn describe(&self) -> Option<String> {
        match &self.outcome {
            Outcome::Exited(_) | Outcome::Stopped => None,
            Outcome::Rebooted => Some("guest asked to reboot; ended instead".into()),
            #[cfg(not(target_arch = "aarch64"))]
            Outcome::Crashed { reason, registers: Some(r) } => Some(format!(
                "guest {reason}\nrip={:#018x} rsp={:#018x} rflags={:#x} rax={:#x}\ncr0={:#x} cr2={:#x} cr3={:#x}",
                r.rip, r.rsp, r.rflags, r.rax, r.cr0, r.cr2, r.cr3
            )),
            // The glue puts arm64's registers in the same slots.
            #[cfg(target_arch = "aarch64")]
            Outcome::Crashed { reason, registers: Some(r) } => Some(format!(
                "guest {reason}\npc={:#018x} sp={:#018x} cpsr={:#x} x0={:#x}\nsctlr={:#x} ttbr0={:#x}",
                r.rip, r.rsp, r.rflags, r.rax, r.cr0, r.cr3
            )),
            Outcome::Crashed { reason, registers: None } => Some(format!("guest {reason}")),
            Outcome::Vanished => Some("the domain was destroyed by someone else".into()),
        }
    }
}
