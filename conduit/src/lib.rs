//! Conduit on the host: named shared-memory channels between unikernels on
//! one node, as a monitor brokers them for its guest.
//!
//! - [`anchor`]: the directory of the monitors' sockets, which proves who
//!   holds a name and what group it is in;
//! - [`rendezvous`]: the `/conduit` tree in XenStore (registrations,
//!   requests, a channel's metadata);
//! - [`wire`]: what two monitors say to hand a channel over;
//! - [`memory`]: a channel's memory, a sealed memfd both map;
//! - [`channel`]: an open channel as a monitor holds it;
//! - [`policy`]: who may connect to whom;
//! - [`broker`]: the thread that does all of it for one unikernel.
//!
//! The ring itself, which the guests use, is `jitsu-vchan`'s.

pub mod anchor;
pub mod broker;
pub mod channel;
pub mod memory;
pub mod policy;
pub mod rendezvous;
pub mod wire;

pub use anchor::Dir;
pub use broker::{Broker, BrokerConfig, BrokerHandle, Delivery};
pub use channel::Channel;
pub use policy::Policy;
pub use wire::Reason;
