//! Jitsu's Xen backend: a unikernel as a PVH domain in dom0's care, built
//! and ended through libxl (never by running `xl`). This is where Xen plugs
//! in; `jitsu-runtime` and everything above it never name Xen.
//!
//! - `toolstack.rs`: libxl, XenStore and libxenctrl, through `glue/toolstack.c`;
//! - `image.rs`: which kernels are accepted, checked before libxl runs;
//! - `bridge.rs`: the bridge the vifs join, over netlink;
//! - `domain.rs`: one domain's life (build paused, console, unpause, end);
//! - `report.rs`: how it ended, as the runtime reports it.

pub mod bridge;
pub mod domain;
pub mod image;
pub mod report;
pub mod toolstack;

pub use domain::{Domain, DomainConfig, DomainError, NetConfig};
pub use report::{Outcome, Report};
pub use toolstack::Toolstack;
