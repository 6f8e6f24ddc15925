//! `jitsu run`: the unikernel's monitor, `jitsu-monitor`, which this
//! process becomes (exec, so its pid, signals and exit status are the
//! monitor's). The monitor is a binary of its own so that every parked
//! service pays only for what a monitor needs.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use anyhow::Result;

/// `$JITSU_MONITOR`, else `jitsu-monitor` beside this binary, else on PATH.
pub fn monitor_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("JITSU_MONITOR") {
        return PathBuf::from(bin);
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.join("jitsu-monitor")));
    sibling
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("jitsu-monitor"))
}

/// Execs the monitor with `args`; returns only if that fails.
pub fn exec(args: impl IntoIterator<Item = OsString>) -> Result<u8> {
    let monitor = monitor_bin();
    let err = std::process::Command::new(&monitor).args(args).exec();
    anyhow::bail!("cannot run {}: {err}", monitor.display())
}
