//! `--lazy`: the domain parked under the supervisor (see
//! `jitsu_xen::backend`), booted by the first packet for its address, a
//! lookup of its name or a `boot` on the control socket, and parked again
//! when idle. The options are the KVM monitor's, so the shim and `jitsu run`
//! give both the same ones.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use jitsu_runtime::args;
use jitsu_runtime::control::ControlServer;
use jitsu_runtime::inherited::ReadyFd;
use jitsu_runtime::supervisor::{Ended, LazyConfig, RegistryConfig, ServiceAddress, Supervisor};
use jitsu_runtime::GuestReport;
use jitsu_xen::{ParkAt, Toolstack, XenBackend};

#[derive(Args)]
pub struct LazyArgs {
    /// Park the domain and boot it on the first packet for its address (or
    /// a `boot` on the control socket). Needs --net and --ip.
    #[arg(long, requires = "net")]
    pub lazy: bool,
    /// With --lazy: park a fresh domain after this long without a frame.
    #[arg(long, value_parser = args::parse_duration, requires = "lazy")]
    idle_timeout: Option<Duration>,
    /// With --lazy: serve `boot`, `stop`, `status` on this unix socket.
    #[arg(long, value_name = "PATH", requires = "lazy")]
    control: Option<PathBuf>,
    /// With --lazy: register the service in XenStore under this name (Xen's
    /// own xenstored in dom0: $XENSTORED_PATH, else /var/run/xenstored/socket).
    #[arg(long, requires = "lazy")]
    pub name: Option<String>,
    /// With --name: who owns the name (default: `pid:` and the monitor's pid).
    #[arg(long, requires = "name")]
    owner: Option<String>,
    /// With --lazy: drop packets that arrive while the guest boots.
    #[arg(long, requires = "lazy")]
    no_hold: bool,
    /// With --lazy: what a parked domain has done already: run until its
    /// network connected, then paused (ready: a boot is an unpause), or
    /// nothing at all (entry: no guest instruction before the trigger).
    #[arg(long, value_enum, default_value_t = ParkPoint::Ready, requires = "lazy")]
    park_at: ParkPoint,
    /// With --lazy: write `parked` (or `error: REASON`) to this inherited
    /// descriptor once the domain is parked (or setup failed), and close it.
    #[arg(long, value_name = "FD", requires = "lazy")]
    ready_fd: Option<i32>,
    /// End (as on SIGTERM) when the parent process dies.
    #[arg(long)]
    die_with_parent: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum ParkPoint {
    Entry,
    Ready,
}

pub fn run(args: &crate::Args) -> Result<u8> {
    let mut ready = args.lazy.ready_fd.map(ReadyFd::adopt).transpose()?;
    let result = run_lazy(args, &mut ready);
    if let (Some(ready), Err(err)) = (ready, &result) {
        ready.report(&format!("error: {err:#}"));
    }
    result
}

fn run_lazy(args: &crate::Args, ready: &mut Option<ReadyFd>) -> Result<u8> {
    let lazy = &args.lazy;
    if lazy.die_with_parent {
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)
            .context("PR_SET_PDEATHSIG")?;
    }
    let kernel = args.kernel().display().to_string();
    let config = crate::config(args)?;
    let net = config
        .net
        .clone()
        .context("--lazy needs a network (--net BRIDGE --ip ADDR/PREFIX)")?;
    let signals = crate::termination_signals()?;
    let control = lazy
        .control
        .as_deref()
        .map(|path| {
            ControlServer::bind(path).with_context(|| format!("control socket {}", path.display()))
        })
        .transpose()?;
    let registry = lazy
        .name
        .as_deref()
        .map(|name| {
            RegistryConfig::new(
                name,
                lazy.owner.as_deref(),
                jitsu_xenstore::server::default_socket_path(),
            )
        })
        .transpose()?;
    let verbosity = std::env::var("JITSU_XEN_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let park_at = match lazy.park_at {
        ParkPoint::Entry => ParkAt::Entry,
        ParkPoint::Ready => ParkAt::Ready,
    };
    let stand_in = format!("jsi{}", std::process::id());
    let backend = XenBackend::new(Toolstack::open(verbosity)?, config, &stand_in, park_at)
        .with_context(|| kernel.clone())?;
    let lazy_config = LazyConfig {
        address: ServiceAddress {
            mac: net.mac,
            ipv4: net.ipv4,
        },
        idle_timeout: lazy.idle_timeout,
        control,
        hold: !lazy.no_hold,
        registry,
        // The guests hand channels over themselves; the name follows the
        // guest to each fresh domain (the supervisor moves it).
        conduit: crate::conduit_registration(args)?,
    };
    let mut supervisor = Supervisor::new(lazy_config, backend).with_context(|| kernel.clone())?;
    tracing::info!("parked; waiting for a packet or a boot command");
    if let Some(ready) = ready.take() {
        ready.report("parked");
    }
    match supervisor
        .serve(signals.as_fd())
        .with_context(|| kernel.clone())?
    {
        Ended::Signal(signal) => Ok(128 + signal as u8),
        Ended::Guest(report) => {
            if let Some(what) = report.describe() {
                eprintln!("jitsu: {kernel}: {what}");
            }
            Ok(report.exit_code())
        }
    }
}
