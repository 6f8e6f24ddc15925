//! What one client may use. Exceeding a limit returns the Xen error for it,
//! leaves the tree unchanged and the connection usable.

use crate::store::Quota;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Nodes owned per domain (EQUOTA). Socket clients act as dom0, and the
    /// limit applies to dom0 too: one runaway shim must not fill the store.
    pub nodes_per_domain: usize,
    /// Watches per connection (E2BIG, as xenstored answers).
    pub watches_per_conn: usize,
    /// Open transactions per connection (ENOSPC, as xenstored answers).
    pub transactions_per_conn: usize,
    /// Messages queued for a client that does not read before it is dropped.
    pub outbox_per_conn: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            nodes_per_domain: 100_000,
            watches_per_conn: 256,
            transactions_per_conn: 32,
            outbox_per_conn: 4096,
        }
    }
}

impl Limits {
    pub fn quota(&self) -> Quota {
        Quota {
            nodes_per_domain: self.nodes_per_domain,
        }
    }
}
