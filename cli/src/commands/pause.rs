//! `jitsu pause`: the process of a Kubernetes pod sandbox. It holds nothing
//! but its place in the pod's network namespace (containerd hands the pod's
//! other containers `/proc/<pid>/ns/net`) and waits to be told to end.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use nix::sys::signal::{SigSet, Signal};

#[derive(Args)]
pub struct PauseArgs {
    /// The pod's network namespace, to live in.
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,
    /// End when the parent process (the shim) dies.
    #[arg(long)]
    die_with_parent: bool,
}

/// Waits for SIGINT or SIGTERM and exits 0.
pub fn run(args: PauseArgs) -> Result<u8> {
    if args.die_with_parent {
        nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).context("PR_SET_PDEATHSIG")?;
        // A parent that died before the call above sent no signal.
        anyhow::ensure!(
            nix::unistd::getppid() != nix::unistd::Pid::from_raw(1),
            "the parent is already gone"
        );
    }
    if let Some(netns) = &args.netns {
        jitsu_runtime::netns::enter(netns)
            .with_context(|| format!("entering network namespace {}", netns.display()))?;
    }
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().context("blocking signals")?;
    signals.wait().context("waiting for a signal")?;
    Ok(0)
}
