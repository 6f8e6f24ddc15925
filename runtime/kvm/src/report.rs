//! What a run produced: how the guest ended, and when each phase happened.

use std::time::{Duration, Instant};

use crate::devices::net::NetStats;
use crate::hypercall::HypercallError;

use jitsu_runtime::{GuestReport, EXIT_GUEST_FAULT};

/// Phases, measured from `start` (the caller's notion of "exec").
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub start: Instant,
    pub vm_create: Duration,
    pub load: Duration,
    /// When the vCPU thread entered KVM_RUN the first time.
    pub run: Duration,
    /// When the guest executed its first instruction (from its entry TSC).
    pub first_instruction: Option<Duration>,
    /// From the boot request (trigger) to the first guest instruction.
    pub boot_latency: Option<Duration>,
    pub exit: Duration,
}

impl Timings {
    pub fn new(start: Instant) -> Timings {
        Timings {
            start,
            vm_create: Duration::ZERO,
            load: Duration::ZERO,
            run: Duration::ZERO,
            first_instruction: None,
            boot_latency: None,
            exit: Duration::ZERO,
        }
    }
}

/// How the guest ended.
#[derive(Debug)]
pub enum Outcome {
    Halted(u8),
    Crashed {
        reason: String,
        registers: String,
    },
    Violation(HypercallError),
    /// The monitor was asked to stop the guest.
    Stopped,
}

impl Outcome {
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Halted(status) => *status as i32,
            Outcome::Crashed { .. } | Outcome::Violation(_) => EXIT_GUEST_FAULT,
            Outcome::Stopped => 128 + libc::SIGTERM,
        }
    }
}

#[derive(Debug)]
pub struct RunReport {
    pub outcome: Outcome,
    pub timings: Timings,
    pub net: Option<NetStats>,
}

impl GuestReport for RunReport {
    fn was_stopped(&self) -> bool {
        matches!(self.outcome, Outcome::Stopped)
    }

    fn exit_code(&self) -> u8 {
        self.outcome.exit_code() as u8
    }

    fn describe(&self) -> Option<String> {
        match &self.outcome {
            Outcome::Halted(_) | Outcome::Stopped => None,
            Outcome::Crashed { reason, registers } => {
                Some(format!("guest crashed: {reason}\n{registers}"))
            }
            Outcome::Violation(err) => Some(format!("guest stopped: {err}")),
        }
    }
}
