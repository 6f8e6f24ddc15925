//! `jitsu run`: the unikernel's monitor, which this process becomes (exec,
//! so its pid, signals and exit status are the monitor's). The monitors are
//! binaries of their own so that every parked service pays only for what a
//! monitor needs: `jitsu-monitor` (KVM) and `jitsu-xen-monitor` (a Xen
//! domain, from dom0). `--hypervisor kvm|xen|auto`, first among the options,
//! picks one; `auto` (the default) is Xen on a Xen dom0, else KVM.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use anyhow::Result;

pub use jitsu_spec::Hypervisor;

/// The monitor binary of `hypervisor`, and the variable that overrides it.
fn monitor_of(hypervisor: Hypervisor) -> (&'static str, &'static str) {
    match hypervisor {
        Hypervisor::Kvm => ("JITSU_MONITOR", "jitsu-monitor"),
        Hypervisor::Xen => ("JITSU_XEN_MONITOR", "jitsu-xen-monitor"),
    }
}

/// The monitor for `hypervisor`: its variable (`$JITSU_MONITOR`,
/// `$JITSU_XEN_MONITOR`), else the binary beside this one, else on PATH.
pub fn monitor_bin_for(hypervisor: Hypervisor) -> PathBuf {
    let (var, name) = monitor_of(hypervisor);
    jitsu_runtime::args::our_binary(var, name)
}

/// Takes `--hypervisor X` (or `--hypervisor=X`) off the front of `args`.
fn split_hypervisor(mut args: Vec<OsString>) -> Result<(Hypervisor, Vec<OsString>)> {
    let value = match args.first().and_then(|a| a.to_str()) {
        Some("--hypervisor") if args.len() >= 2 => {
            let value = args[1].clone();
            args.drain(..2);
            Some(value)
        }
        Some(a) if a.starts_with("--hypervisor=") => {
            let value = OsString::from(&a["--hypervisor=".len()..]);
            args.remove(0);
            Some(value)
        }
        _ => None,
    };
    let hypervisor = match value.as_deref().map(OsStr::to_str) {
        None => None,
        Some(Some(text)) => {
            Hypervisor::parse_choice(text).map_err(|e| anyhow::anyhow!("--hypervisor {e}"))?
        }
        Some(None) => anyhow::bail!("--hypervisor (not UTF-8): want kvm, xen or auto"),
    }
    .unwrap_or_else(Hypervisor::of_this_node);
    Ok((hypervisor, args))
}

/// Execs the monitor with `args`; returns only if that fails.
pub fn exec(args: impl IntoIterator<Item = OsString>) -> Result<u8> {
    let (hypervisor, args) = split_hypervisor(args.into_iter().collect())?;
    let monitor = monitor_bin_for(hypervisor);
    let err = std::process::Command::new(&monitor).args(args).exec();
    anyhow::bail!("cannot run {}: {err}", monitor.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_hypervisor_option_is_taken_off_the_front() {
        let (h, rest) =
            split_hypervisor(os(&["--hypervisor", "xen", "--mem", "32M", "k"])).unwrap();
        assert_eq!(h, Hypervisor::Xen);
        assert_eq!(rest, os(&["--mem", "32M", "k"]));
        let (h, rest) = split_hypervisor(os(&["--hypervisor=kvm", "k"])).unwrap();
        assert_eq!(h, Hypervisor::Kvm);
        assert_eq!(rest, os(&["k"]));
        assert!(split_hypervisor(os(&["--hypervisor", "hyperv", "k"])).is_err());
        let (_, rest) = split_hypervisor(os(&["k", "--", "--hypervisor", "xen"])).unwrap();
        assert_eq!(rest, os(&["k", "--", "--hypervisor", "xen"]));
    }
}
