//! A vchan: two byte rings and their indices in memory shared by two
//! unikernels, with the layout of Xen's libxenvchan (`xen/io/libxenvchan.h`),
//! so that the same guest code talks to a peer on KVM (pages of a memfd
//! both monitors map) and on Xen (granted pages), and to Xen's own vchan
//! tools in dom0.
//!
//! - [`layout`]: where everything is in the control page, and which ring
//!   orders fit where;
//! - [`shared`]: memory the peer may write at any moment, reached only
//!   through atomics and bounds-checked copies;
//! - [`endpoint`]: one end of a channel (the server, which lays the page
//!   out, or the client), its reads and writes, its notifications and the
//!   peer's liveness;
//! - [`rendezvous`]: where the two ends find each other in XenStore
//!   (`/conduit`), its paths written and parsed strictly.
//!
//! Nothing the peer writes is trusted: an index that claims more data (or
//! space) than its ring holds is reported as [`Error::Corrupt`], and no copy
//! ever leaves the ring's own bytes.

#![cfg_attr(not(test), no_std)]

pub mod endpoint;
pub mod layout;
pub mod rendezvous;
pub mod shared;
#[cfg(test)]
mod tests;

pub use endpoint::{mark_gone, Endpoint, Peer, Role, Transfer};
pub use layout::{ChannelParts, Error, Region};
pub use shared::Shared;
