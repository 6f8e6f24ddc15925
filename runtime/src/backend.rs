//! The seam between the supervisor and a hypervisor: everything the lazy
//! supervisor knows of a unikernel goes through these traits, so Synjitsu,
//! DNS, the registry and the shim never name a hypervisor. A backend is one
//! crate beside this one (`runtime/kvm`; `runtime/xen` next).
//!
//! A unikernel's life, and what each backend does at each step:
//!
//! | step | KVM (`jitsu-kvm`) | Xen (libxl) |
//! |---|---|---|
//! | [`Backend::prepare`] → [`Parked`] | validate the ELF, create the VM, memory, page tables and registers; start the vCPU thread, confine it with seccomp, and let it wait | build the domain and its vif, and leave it paused |
//! | while parked: [`Backend::frames`] | the TAP, read by Synjitsu | a TAP standing in for the vif on the same bridge |
//! | [`Parked::boot`] → [`Running`] | hand the held frames to the NIC, let the vCPU thread enter the guest | push the held frames through the vif, unpause |
//! | [`Running::done_fd`] | an eventfd the vCPU thread writes when it ends | readable on the domain's death (`@releaseDomain`) |
//! | [`Running::last_activity_ns`] | the NIC's last frame either way, from the boot on | the vif's counters |
//! | [`Running::boot_latency`] | trigger to the guest's entry TSC | trigger to the first frame or console byte |
//! | [`Running::stop_if_idle`] | the vCPU thread checks its NIC between exits and stops or declines | pause, read the vif's counters, destroy or unpause |
//! | [`Running::stop`] | kick the vCPU thread out of the guest, join it | destroy the domain |
//!
//! A parked backend must have paid for everything but the first
//! instruction: the supervisor boots on the first packet, and the client
//! is waiting.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

/// Frames to and from a service's link while no guest runs (Synjitsu's
/// side): readable when a frame waits.
pub trait FramePort {
    fn fd(&self) -> BorrowedFd<'_>;
    /// The longest frame the link carries (its MTU and an Ethernet header).
    fn max_frame(&self) -> usize;
    /// One frame into `buf`; `WouldBlock` when none waits.
    fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize>;
    fn send(&self, frame: &[u8]) -> std::io::Result<()>;
}

/// A hypervisor's way of running one unikernel, again and again.
pub trait Backend {
    type Parked: Parked<Running = Self::Running, Error = Self::Error>;
    type Running: Running<Report = Self::Report, Error = Self::Error>;
    /// How a guest ended, as the backend can tell.
    type Report: GuestReport;
    type Error: std::error::Error + Send + Sync + 'static;

    /// Everything but the first guest instruction.
    fn prepare(&mut self) -> Result<Self::Parked, Self::Error>;

    /// Where frames for the service arrive while it is parked.
    fn frames(&self) -> &dyn FramePort;

    /// Console output dropped because nobody read it, over the monitor's life.
    fn console_dropped_bytes(&self) -> u64 {
        0
    }

    /// Frames the guest sent as someone else, refused (see
    /// [`crate::egress`]), over the monitor's life.
    fn frames_refused(&self) -> u64 {
        0
    }
}

/// A unikernel ready to run its first instruction.
pub trait Parked: Sized {
    type Running;
    type Error;

    /// Lets the guest run; `held` reach it before anything else, in order.
    /// `trigger` is when the boot was asked for (its latency is timed from
    /// there, and so is its idleness).
    fn boot(self, held: Vec<Vec<u8>>, trigger: Instant) -> Self::Running;
}

/// A running unikernel.
pub trait Running: Sized {
    type Report;
    type Error;

    /// Readable once the guest has ended.
    fn done_fd(&self) -> BorrowedFd<'_>;

    /// When a frame last moved to or from the guest (`clock::now_ns`).
    fn last_activity_ns(&self) -> u64;

    /// Trigger to first guest instruction, once known.
    fn boot_latency(&self) -> Option<Duration>;

    /// Stops the guest wherever it is.
    fn stop(self) -> Result<Self::Report, Self::Error>;

    /// Stops the guest if no frame has moved for `idle_for`, as seen where
    /// frames move (the supervisor's view is a moment old); else it runs on.
    fn stop_if_idle(self, idle_for: Duration) -> Result<IdleStop<Self>, Self::Error>;

    /// Waits for a guest that has ended by itself (`done_fd` readable).
    fn wait(self) -> Result<Self::Report, Self::Error>;
}

/// How an idle stop went.
pub enum IdleStop<R: Running> {
    /// The guest had ended (stopped as asked, or by itself just before).
    Stopped(R::Report),
    /// The guest had been busy after all: it runs on.
    Busy(R),
}

/// How a guest ended.
pub trait GuestReport {
    /// The monitor stopped it (idle, a command, a signal).
    fn was_stopped(&self) -> bool;
    /// The monitor's exit status for it (the guest's own, or a fault's).
    fn exit_code(&self) -> u8;
    /// What the operator should hear about it (a crash, a broken ABI).
    fn describe(&self) -> Option<String>;
}
