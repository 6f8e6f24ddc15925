pub mod control;
pub mod daemon;
pub mod install_node;
pub mod pack;
pub mod pause;
pub mod ps;
pub mod run;
pub mod xenstored;

use std::path::Path;

use anyhow::{Context, Result};

/// Moves this process into the network namespace at `path`. Called before
/// any thread starts: threads started later inherit it.
pub fn enter_netns(path: &Path) -> Result<()> {
    let ns = std::fs::File::open(path)
        .with_context(|| format!("network namespace {}", path.display()))?;
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {}", path.display()))
}
