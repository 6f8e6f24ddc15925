//! The seam between the supervisor and a hypervisor: everything the lazy
//! supervisor knows of a unikernel goes through these traits, so Synjitsu,
//! DNS, the registry and the shim never name a hypervisor. A backend is one
//! crate beside this one (`runtime/kvm`; `runtime/xen` next).
//!
//! A unikernel's life, and what each backend does at each step:
//!
//! | step | KVM (`jitsu-kvm`) | Xen (`jitsu-xen`, libxl) |
//! |---|---|---|
//! | [`Backend::prepare`] → [`Parked`] | validate the ELF, create the VM, memory, page tables and registers; start the vCPU thread, confine it with seccomp, and let it wait | build the domain and its vif, pin the service's MAC to a TAP on the vif's bridge, and leave the domain paused |
//! | while parked: [`Backend::frames`] | the TAP, read by Synjitsu | that TAP, standing in for the vif |
//! | [`Parked::boot`] → [`Running`] | hand the held frames to the NIC, let the vCPU thread enter the guest | unpause; the held frames wait for the guest's netfront |
//! | [`Running::link_pending`], [`Running::hand_over`] | never pending: the guest reads the TAP from its first instruction | pending until netback says the vif is connected; then the held frames go straight into the vif and the MAC is pinned to it |
//! | [`Running::done_fd`], [`Running::has_ended`] | an eventfd the vCPU thread writes when it ends | XenStore's `@releaseDomain` watch (for any domain: `has_ended` checks ours) |
//! | [`Running::last_activity_ns`] | the NIC's last frame either way, from the boot on | when the guest last sent a frame (the vif's count moved), from the boot on |
//! | [`Running::boot_latency`] | trigger to the guest's entry TSC | trigger to the hand-over (the guest's NIC up) |
//! | [`Running::stop_if_idle`] | the vCPU thread checks its NIC between exits and stops or declines | pause, pin the MAC to the TAP, read the vif's count again; destroy, or undo and unpause |
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

    /// The hypervisor's name, as the registry and `jitsu ps` show it.
    fn hypervisor(&self) -> &'static str;

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

    /// Xen's id of the domain standing for the service (None elsewhere).
    fn domain_id(&self) -> Option<u32> {
        None
    }

    /// Lets the guest run; `held` reach it before anything else, in order.
    /// `trigger` is when the boot was asked for (its latency is timed from
    /// there, and so is its idleness).
    fn boot(self, held: Vec<Vec<u8>>, trigger: Instant) -> Self::Running;
}

/// A running unikernel.
pub trait Running: Sized {
    type Report;
    type Error;

    /// Xen's id of the guest's domain (None elsewhere).
    fn domain_id(&self) -> Option<u32> {
        None
    }

    /// Readable once the guest has ended (or may have: see [`Running::has_ended`]).
    fn done_fd(&self) -> BorrowedFd<'_>;

    /// Whether the guest has ended, once `done_fd` is readable: a backend
    /// whose fd also wakes for others (Xen's watch fires for every domain)
    /// says here whether it was this guest.
    fn has_ended(&mut self) -> bool {
        true
    }

    /// Readable when the guest's own link may have come up; `None` once
    /// the guest takes its frames itself. Until then frames for the service
    /// still arrive at [`Backend::frames`], and Synjitsu goes on holding them.
    fn link_pending(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    /// Whether the guest's link is up, so that [`Running::hand_over`] can run.
    fn link_up(&mut self) -> bool {
        true
    }

    /// From now on the guest takes its own frames: first those held at the
    /// boot, then `held` (what arrived since), in order, before any other.
    fn hand_over(&mut self, held: Vec<Vec<u8>>) -> Result<(), Self::Error> {
        let _ = held;
        Ok(())
    }

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
