//! Jitsu's runtime, whatever the hypervisor: the lazy supervisor that keeps
//! a unikernel parked until a packet, a lookup or a command asks for it (and
//! parks it again when idle), its control socket, its voice in the XenStore
//! registry, and the [`Backend`] traits a hypervisor implements. The KVM
//! backend is `runtime/kvm` (`jitsu-kvm`); the monitor binary that puts them
//! together is `runtime/monitor` (`jitsu-monitor`).

pub mod agent;
pub mod args;
pub mod backend;
pub mod clock;
pub mod control;
pub mod egress;
pub mod inherited;
pub mod jail;
pub mod logging;
pub mod netns;
pub mod supervisor;
pub mod tap;

pub use backend::{Backend, FramePort, GuestReport, IdleStop, Parked, Running};

/// Exit status of a monitor that could not start its guest.
pub const EXIT_SETUP_FAILED: i32 = 125;
/// Exit status of a monitor whose guest crashed or broke the ABI.
pub const EXIT_GUEST_FAULT: i32 = 126;
