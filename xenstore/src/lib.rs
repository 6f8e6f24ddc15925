//! XenStore for Jitsu: the wire protocol, a daemon that Xen's own tools can
//! talk to (with transactions that merge independent registrations), and an
//! async client.

pub mod client;
pub mod daemon;
pub mod limits;
pub mod path;
pub mod perms;
pub mod server;
pub mod store;
pub mod transaction;
pub mod wire;

pub use client::{Client, ClientError, Transaction, Watch, WatchEvent};
pub use daemon::Daemon;
pub use limits::Limits;
pub use server::Server;
pub use wire::{Message, MsgType, XsError};
