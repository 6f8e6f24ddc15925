//! Jitsu's Xen backend: a unikernel as a PVH domain in dom0's care, built
//! and ended through libxl (never by running `xl`). This is where Xen plugs
//! in; `jitsu-runtime` and everything above it never name Xen.
//!
//! - `toolstack.rs`: libxl, XenStore and libxenctrl, through `glue/toolstack.c`;
//! - `jitsu_xen_abi::image`: which kernels are accepted, checked before libxl runs;
//! - `bridge.rs`: the bridge the vifs join, over netlink;
//! - `domain.rs`: one domain's life (build paused, console, unpause, end);
//! - `report.rs`: how it ended, as the runtime reports it;
//! - `backend.rs`: the runtime's `Backend` traits over domains (parked
//!   paused, booted by unpausing, the MAC moved from Synjitsu's TAP to the
//!   vif once netfront connects);
//! - `vif.rs`: a domain's vif from dom0 (frames straight to the guest, its counters);
//! - `console.rs`: a lazy domain's console, relayed by a thread.

pub mod backend;
pub mod bridge;
pub mod console;
pub mod domain;
/// Which kernels are accepted (shared with `jitsu pack`).
pub use jitsu_xen_abi::image;
pub mod report;
pub mod toolstack;
pub mod vif;

pub use backend::{ParkAt, XenBackend, XenError};
pub use domain::{Domain, DomainConfig, DomainError, NetConfig};
pub use report::{Outcome, Report};
pub use toolstack::Toolstack;
