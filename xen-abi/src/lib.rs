//! What Jitsu's Xen guests share with Xen and dom0, kept apart from the
//! guest SDK so that it builds and is tested on the host (`cargo test -p
//! jitsu-xen-abi`, property tests included), as `abi/` is for KVM:
//!
//! - [`defs`]: Xen's public structures and constants (4.17);
//! - [`ring`]: the shared-ring protocol of `io/ring.h` (netfront's rings;
//!   Conduit's later), both ends;
//! - [`text`]: the values XenStore carries for a NIC (MAC, IPv4, MTU).

#![cfg_attr(not(test), no_std)]

pub mod defs;
pub mod ring;
pub mod text;
