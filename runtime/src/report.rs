//! What a run produced: how the guest ended, and when each phase happened.

use std::time::{Duration, Instant};

use crate::devices::net::NetStats;
use crate::hypercall::HypercallError;

/// Exit status of a monitor that could not start its guest.
pub const EXIT_SETUP_FAILED: i32 = 125;
/// Exit status of a monitor whose guest crashed or broke the ABI.
pub const EXIT_GUEST_FAULT: i32 = 126;

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
    /// The monitor was asked to stop the guest ([`RunningVm::stop`]).
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
