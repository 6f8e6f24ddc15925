//! `jitsu control`: talk to a lazy monitor's control socket.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use jitsu_runtime::control::{self, Command};

#[derive(Args)]
pub struct ControlArgs {
    /// The monitor's control socket (`jitsu run --lazy --control PATH`).
    socket: PathBuf,
    /// boot, stop or status.
    command: String,
}

pub fn run(args: ControlArgs) -> Result<u8> {
    if Command::parse(&args.command).is_none() {
        bail!("unknown command {:?} (boot, stop, status)", args.command);
    }
    let reply = control::request(&args.socket, &args.command)
        .with_context(|| format!("{}", args.socket.display()))?;
    println!("{reply}");
    Ok(if reply.contains("\"error\"") { 1 } else { 0 })
}
