//! Entering a network namespace, for a monitor (or a pod's pause process)
//! whose TAP lives in a Kubernetes pod's namespace.

use std::path::Path;

/// Moves this process into the network namespace at `path`. Call it before
/// any thread starts: threads started later inherit it.
pub fn enter(path: &Path) -> std::io::Result<()> {
    let ns = std::fs::File::open(path)?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}
