//! `jitsu-xen-monitor`: one unikernel as a Xen domain, from dom0. `jitsu run
//! --hypervisor xen` (or `jitsu run` on a dom0) execs it with the flags it
//! would give the KVM monitor: build the domain paused, relay its console to
//! stdout, unpause, and end with its exit status; SIGINT or SIGTERM destroys
//! it (status 128 + the signal). With `--lazy` the domain is parked under
//! the supervisor instead (`lazy.rs`).

mod lazy;

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use jitsu_runtime::args;
use jitsu_runtime::GuestReport;
use jitsu_xen::{Domain, DomainConfig, NetConfig, Toolstack};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

#[derive(Parser)]
#[command(
    name = "jitsu run --hypervisor xen",
    version,
    about = "Boot a unikernel as a Xen PVH domain (run in dom0)."
)]
pub(crate) struct Args {
    /// Guest memory (a multiple of 1M, 4M to 4G).
    #[arg(long, default_value = "16M", value_parser = args::parse_size)]
    mem: u64,
    /// The bridge for the domain's vif (made, and brought up, if missing).
    #[arg(long, value_name = "BRIDGE")]
    pub net: Option<String>,
    /// The guest's MAC address (default: 02:4a and the four bytes of --ip).
    #[arg(long, value_parser = args::parse_mac, requires = "net")]
    mac: Option<[u8; 6]>,
    /// The guest's IPv4 address and prefix length.
    #[arg(long, value_name = "ADDR/PREFIX", value_parser = args::parse_cidr, requires = "net")]
    ip: Option<(Ipv4Addr, u8)>,
    /// The guest's default gateway (a bridge this monitor makes gets this address).
    #[arg(long, value_name = "ADDR", requires = "net")]
    gw: Option<Ipv4Addr>,
    /// An initial ramdisk, for stock kernels (a Linux PVH kernel).
    #[arg(long, value_name = "FILE")]
    initrd: Option<PathBuf>,
    /// The domain's name in Xen (default: jitsu-<--name>, else jitsu-<kernel>-<pid>).
    #[arg(long)]
    domain_name: Option<String>,
    #[command(flatten)]
    lazy: lazy::LazyArgs,
    /// The unikernel's Conduit name: the guest listens under it and
    /// connects as it (over grants and event channels, doing Conduit's
    /// rendezvous in XenStore itself); this monitor registers it for the
    /// guest's domain, and a request filed for it boots a parked guest.
    #[arg(long = "conduit", id = "conduit", value_name = "NAME")]
    conduit: Option<String>,
    /// Print build, unpause and first console byte, in microseconds.
    #[arg(long)]
    timings: bool,
    /// Read the kernel from this inherited descriptor (opened by the shim
    /// inside the image); KERNEL is then only its name in messages.
    #[arg(long, value_name = "FD")]
    kernel_fd: Option<i32>,
    /// Destroy the domain of this name, if there is one, and exit: how the
    /// shim cleans up after a monitor that was killed.
    #[arg(long, value_name = "NAME", exclusive = true)]
    destroy_domain: Option<String>,
    /// The unikernel (an ELF with Xen's PVH note, or a Linux bzImage).
    #[arg(required_unless_present = "destroy_domain")]
    kernel: Option<PathBuf>,
    /// Command line handed to the guest.
    #[arg(last = true)]
    args: Vec<String>,
}

impl Args {
    /// KERNEL (present unless --destroy-domain, which needs none).
    pub(crate) fn kernel(&self) -> &std::path::Path {
        self.kernel.as_deref().unwrap_or(std::path::Path::new(""))
    }
}

fn main() -> ExitCode {
    jitsu_runtime::logging::init_monitor_logging();
    let args = Args::parse();
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("jitsu: error: {err:#}");
            ExitCode::from(jitsu_runtime::EXIT_SETUP_FAILED as u8)
        }
    }
}

/// Destroys the domain `name` if it exists (libxl removes its vif too).
fn destroy_domain(name: &str) -> Result<u8> {
    let toolstack = Toolstack::open(0)?;
    if let Some(domid) = toolstack.domid_by_name(name)? {
        toolstack
            .destroy(domid)
            .with_context(|| format!("domain {name} ({domid})"))?;
        eprintln!("jitsu: destroyed domain {name} ({domid})");
    }
    Ok(0)
}

/// The kernel libxl reads: the inherited descriptor's own path (libxl
/// opens kernels by name), else KERNEL.
fn kernel_path(args: &Args) -> Result<PathBuf> {
    let Some(fd) = args.kernel_fd else {
        return Ok(args.kernel().to_path_buf());
    };
    let file = jitsu_runtime::inherited::adopt_fd(fd, "--kernel-fd")?;
    // Kept open for the monitor's life: the path names it.
    let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
    Ok(PathBuf::from(format!("/proc/self/fd/{fd}")))
}

pub(crate) fn config(args: &Args) -> Result<DomainConfig> {
    let stem = args
        .kernel()
        .file_stem()
        .map(|s| {
            s.to_string_lossy()
                .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-")
        })
        .unwrap_or_else(|| "guest".into());
    let net = match &args.net {
        Some(bridge) => {
            let Some((ipv4, prefix_len)) = args.ip else {
                bail!("--net {bridge} needs --ip ADDR/PREFIX: the guest has no other way to learn its address");
            };
            Some(NetConfig {
                bridge: bridge.clone(),
                mac: args.mac.unwrap_or_else(|| args::default_mac(Some(ipv4))),
                ipv4,
                prefix_len,
                gateway: args.gw,
                mtu: None,
            })
        }
        None => None,
    };
    Ok(DomainConfig {
        name: match (&args.domain_name, &args.lazy.name) {
            (Some(name), _) => name.clone(),
            (None, Some(service)) => format!("jitsu-{service}"),
            (None, None) => format!("jitsu-{stem}-{}", std::process::id()),
        },
        kernel: kernel_path(args)?,
        initrd: args.initrd.clone(),
        cmdline: args.args.join(" "),
        memory: args.mem,
        net,
        conduit: args.conduit.clone(),
    })
}

/// The broker that keeps the guest's Conduit name registered for its
/// domain (the guests hand channels over themselves, with grants).
pub(crate) fn conduit_registration(args: &Args) -> Result<Option<jitsu_conduit::Broker>> {
    let Some(name) = &args.conduit else {
        return Ok(None);
    };
    if !jitsu_vchan::rendezvous::valid_label(name) {
        bail!("--conduit {name:?}: a Conduit name is a DNS label (a-z, 0-9, '-', at most 63)");
    }
    let config = jitsu_conduit::BrokerConfig {
        name: name.clone(),
        policy: jitsu_conduit::Policy::new("default", "")?,
        sockets: None,
        xenstore: jitsu_xenstore::server::default_socket_path(),
        domid: jitsu_conduit::broker::NO_DOMAIN,
        identity: |_| None,
        max_channels: jitsu_abi::conduit::SLOTS,
    };
    Ok(Some(
        jitsu_conduit::Broker::start(config).context("registering the Conduit name")?,
    ))
}

fn run(args: Args) -> Result<u8> {
    if let Some(name) = &args.destroy_domain {
        return destroy_domain(name);
    }
    if args.lazy.lazy {
        return lazy::run(&args);
    }
    let start = Instant::now();
    let mut config = config(&args)?;
    // Blocked before anything else, so that a signal during the build is
    // seen (and destroys the domain) rather than killing us halfway.
    let signals = termination_signals()?;
    let verbosity = std::env::var("JITSU_XEN_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let toolstack = Toolstack::open(verbosity)?;
    if let Some(net) = &mut config.net {
        let gateway = net.gateway.map(|gw| (gw, net.prefix_len));
        let bridge = jitsu_xen::bridge::Bridge::ensure(&net.bridge, gateway)?;
        net.mtu = bridge.guest_mtu();
    }
    let mut domain = Domain::create_paused(std::rc::Rc::new(toolstack), &config)
        .with_context(|| format!("{}", args.kernel().display()))?;
    let conduit = conduit_registration(&args)?;
    if let Some(conduit) = &conduit {
        conduit.move_to(domain.domid());
    }
    let built = start.elapsed();
    if let Some(signal) = pending_signal(&signals) {
        drop(domain);
        return Ok(128 + signal);
    }
    domain.unpause()?;
    let mut stdout = std::io::stdout();
    let mut stopped_by = None;
    let watch_fd = domain.watch()?.try_clone_to_owned().context("watch fd")?;
    loop {
        let console = domain
            .console_fd()
            .map(|fd| fd.try_clone_to_owned())
            .transpose()?;
        let mut fds = vec![
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(watch_fd.as_fd(), PollFlags::POLLIN),
        ];
        if let Some(console) = &console {
            fds.push(PollFd::new(console.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e).context("waiting for the domain"),
        }
        let readable = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        if fds.get(2).is_some_and(readable) {
            domain.relay_console(&mut stdout);
        }
        if readable(&fds[0]) {
            stopped_by = pending_signal(&signals);
            break;
        }
        if readable(&fds[1]) && domain.ended()? {
            break;
        }
    }
    let report = domain
        .finish(&mut stdout, stopped_by.is_some())
        .with_context(|| format!("{}", args.kernel().display()))?;
    if let Some(what) = report.describe() {
        eprintln!("jitsu: {}: {what}", args.kernel().display());
    }
    if args.timings {
        let us = |d: Option<std::time::Duration>| {
            d.map_or("unknown".into(), |d| d.as_micros().to_string())
        };
        eprintln!(
            "jitsu: timings (us): build={} unpaused={} first_console_byte_after_unpause={}",
            built.as_micros(),
            us(report.created_to_unpaused),
            us(report.unpaused_to_console),
        );
    }
    Ok(match stopped_by {
        Some(signal) => 128 + signal,
        None => report.exit_code(),
    })
}

pub(crate) fn termination_signals() -> Result<SignalFd> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().context("blocking SIGINT/SIGTERM")?;
    SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("signalfd")
}

fn pending_signal(signals: &SignalFd) -> Option<u8> {
    signals
        .read_signal()
        .ok()
        .flatten()
        .map(|s| s.ssi_signo as u8)
}
