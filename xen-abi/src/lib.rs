//! What Jitsu's Xen guests share with Xen and dom0, kept apart from the
//! guest SDK so that it builds and is tested on the host (`cargo test -p
//! jitsu-xen-abi`, property tests included), as `abi/` is for KVM:
//!
//! - [`defs`]: Xen's public structures and constants (4.17);
//! - [`ring`]: the shared-ring protocol of `io/ring.h` (netfront's rings;
//!   Conduit's later), both ends;
//! - [`text`]: the values XenStore carries for a NIC (MAC, IPv4, MTU);
//! - [`fdt`]: what an arm64 domain reads from libxl's device tree;
//! - `image` (feature `image`, std): which kernels a PVH domain boots, as
//!   the Xen backend checks them before libxl and `jitsu pack` when it
//!   writes an image.

#![cfg_attr(not(any(test, feature = "image")), no_std)]

pub mod defs;
pub mod fdt;
#[cfg(feature = "image")]
pub mod image;
pub mod ring;
pub mod text;
