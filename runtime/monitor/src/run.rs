//! Running one unikernel: directly (to its end), or lazily under the
//! supervisor (parked until something asks for it). The backend is KVM;
//! this is the one place that picks it.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use std::os::fd::AsFd;

use std::sync::Arc;

use jitsu_kvm::kernel_file::KernelFile;
use jitsu_kvm::{KvmBackend, NetSetup, RunReport, Vm, VmConfig};
use jitsu_runtime::control::ControlServer;
use jitsu_runtime::inherited::{adopt_fd, ReadyFd};
use jitsu_runtime::supervisor::{Ended, LazyConfig, RegistryConfig, ServiceAddress, Supervisor};
use jitsu_runtime::tap::Tap;
use jitsu_runtime::{GuestReport, Running};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use jitsu_runtime::args;

#[derive(Args)]
pub struct RunArgs {
    /// Guest memory (multiple of 2M, at most 4G).
    #[arg(long, default_value = "16M", value_parser = args::parse_size)]
    mem: u64,
    /// Existing TAP interface to give the guest as its NIC.
    #[arg(long, value_name = "TAP")]
    net: Option<String>,
    /// The guest's MAC address (default: 02:4a and the four bytes of --ip).
    #[arg(long, value_parser = args::parse_mac, requires = "net")]
    mac: Option<[u8; 6]>,
    /// The guest's IPv4 address and prefix length.
    #[arg(long, value_name = "ADDR/PREFIX", value_parser = args::parse_cidr, requires = "net")]
    ip: Option<(Ipv4Addr, u8)>,
    /// The guest's default gateway.
    #[arg(long, value_name = "ADDR", requires = "net")]
    gw: Option<Ipv4Addr>,
    /// Print the phases of the run, in microseconds since jitsu started.
    #[arg(long)]
    timings: bool,
    /// Park the unikernel and boot it on the first packet for its address
    /// (or a `boot` on the control socket). Needs --net and --ip.
    #[arg(long, requires = "net")]
    lazy: bool,
    /// With --lazy: park a fresh VM after this long without a frame (e.g. 500ms, 30s, 5m).
    #[arg(long, value_parser = args::parse_duration, requires = "lazy")]
    idle_timeout: Option<Duration>,
    /// With --lazy: serve `boot`, `stop`, `status` on this unix socket.
    #[arg(long, value_name = "PATH", requires = "lazy")]
    control: Option<PathBuf>,
    /// Run as this uid (and --jail-gid), in a mount namespace whose root is
    /// an empty tmpfs on --jail-root, once everything is open: how the shim
    /// starts monitors. Not root's.
    #[arg(long, value_name = "UID", requires_all = ["jail_gid", "jail_root"])]
    jail_uid: Option<u32>,
    #[arg(long, value_name = "GID", requires = "jail_uid")]
    jail_gid: Option<u32>,
    /// An empty directory to become the jail's root.
    #[arg(long, value_name = "DIR", requires = "jail_uid")]
    jail_root: Option<PathBuf>,
    /// With --lazy: register the service in XenStore under this name (a DNS
    /// label), keep its state there, and boot when its `boot` key is written.
    /// The XenStore daemon is $XENSTORED_PATH, else /var/run/xenstored/socket.
    #[arg(long, requires = "lazy")]
    name: Option<String>,
    /// With --name: who owns the name (default: `pid:` and the monitor's
    /// pid). An entry another owner holds is never overwritten or removed.
    #[arg(long, requires = "name")]
    owner: Option<String>,
    /// End (as on SIGTERM) when the parent process dies: for monitors
    /// started by the containerd shim.
    #[arg(long)]
    die_with_parent: bool,
    /// With --lazy: drop packets that arrive while the guest boots instead of
    /// holding them (to measure what holding saves).
    #[arg(long, requires = "lazy")]
    no_hold: bool,
    /// Enter this network namespace first (a path such as
    /// /var/run/netns/NAME or /proc/PID/ns/net): for a TAP that lives in a
    /// Kubernetes pod's namespace.
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,
    /// With --lazy: once the VM is parked (or setup failed), write `parked`
    /// (or `error: REASON`) and a newline to this inherited descriptor and
    /// close it: how the shim knows a task is ready, or why it is not.
    #[arg(long, value_name = "FD", requires = "lazy")]
    ready_fd: Option<i32>,
    /// Read the unikernel ELF from this inherited descriptor (opened by the
    /// shim inside the image); KERNEL is then only its name in messages.
    #[arg(long, value_name = "FD")]
    kernel_fd: Option<i32>,
    #[command(flatten)]
    conduit: crate::conduit::ConduitArgs,
    /// The unikernel ELF.
    kernel: PathBuf,
    /// Command line handed to the guest.
    #[arg(last = true)]
    args: Vec<String>,
}

pub fn run(args: RunArgs, start: Instant, start_monotonic: u64) -> Result<u8> {
    let mut ready = args.ready_fd.map(ReadyFd::adopt).transpose()?;
    let result = run_monitor(args, start, start_monotonic, &mut ready);
    if let (Some(ready), Err(err)) = (ready, &result) {
        ready.report(&format!("error: {err:#}"));
    }
    result
}

fn run_monitor(
    args: RunArgs,
    start: Instant,
    start_monotonic: u64,
    ready: &mut Option<ReadyFd>,
) -> Result<u8> {
    if args.die_with_parent {
        die_with_parent()?;
    }
    if let Some(netns) = &args.netns {
        jitsu_runtime::netns::enter(netns)
            .with_context(|| format!("entering network namespace {}", netns.display()))?;
    }
    // Everything the monitor will ever open, it opens now.
    let kernel = match args.kernel_fd {
        Some(fd) => KernelFile::from_file(adopt_fd(fd, "--kernel-fd")?),
        None => KernelFile::open(&args.kernel),
    }
    .with_context(|| format!("{}", args.kernel.display()))?;
    let net = match &args.net {
        Some(tap) => {
            let Some((ipv4, prefix_len)) = args.ip else {
                bail!("--net {tap} needs --ip ADDR/PREFIX: the guest has no other way to learn its address");
            };
            let tap = Tap::open(tap).with_context(|| format!("{}", args.kernel.display()))?;
            let mac = args.mac.unwrap_or_else(|| args::default_mac(Some(ipv4)));
            tap.admit_only(mac, ipv4)?;
            Some(NetSetup {
                tap: Arc::new(tap),
                mac,
                ipv4,
                prefix_len,
                gateway: args.gw,
                refused: Arc::default(),
            })
        }
        None => None,
    };
    let kvm = jitsu_kvm::open_kvm().with_context(|| format!("{}", args.kernel.display()))?;
    jitsu_kvm::devices::console::Console::stdout();
    let control = args
        .control
        .as_deref()
        .map(|path| {
            ControlServer::bind(path).with_context(|| format!("control socket {}", path.display()))
        })
        .transpose()?;
    let runs_as = args
        .jail_uid
        .unwrap_or_else(|| nix::unistd::getuid().as_raw());
    let conduit = args.conduit.bind(runs_as)?;
    let registry_socket = jitsu_xenstore::server::default_socket_path();
    let conduit_dir = conduit.as_ref().map(|c| c.dir().to_path_buf());
    let (registry_socket, conduit_dir) = match (args.jail_uid, args.jail_gid, &args.jail_root) {
        (Some(uid), Some(gid), Some(root)) => {
            let uses_xenstore = args.name.is_some() || conduit.is_some();
            let seen_as = jail(JailPlan {
                uid,
                gid,
                root,
                registry_socket: &registry_socket,
                uses_xenstore,
                conduit_dir: conduit_dir.as_deref(),
            })?;
            if args.die_with_parent {
                // A change of credentials clears the parent-death signal.
                die_with_parent()?;
            }
            seen_as
        }
        _ => (registry_socket, conduit_dir),
    };
    // From here on, every thread is confined; nothing untrusted was read
    // before this line.
    let filters = jitsu_kvm::seccomp::monitor_filter().context("the seccomp filter")?;
    jitsu_kvm::seccomp::apply_to_process(&filters).context("the seccomp filter")?;
    let broker = match (conduit, conduit_dir) {
        (Some(bound), Some(dir)) => Some(bound.start(dir, registry_socket.clone())?),
        _ => None,
    };
    let config = VmConfig {
        mem_size: args.mem,
        cmdline: args.args.join(" "),
        net,
        kvm,
        conduit: broker.as_ref().map(jitsu_conduit::Broker::handle),
    };
    if args.lazy {
        let address = config.net.as_ref().map(|n| ServiceAddress {
            mac: n.mac,
            ipv4: n.ipv4,
        });
        let Some(address) = address else {
            bail!("--lazy needs a network device (--net TAP --ip ADDR/PREFIX)");
        };
        let backend = KvmBackend::new(kernel, config)
            .with_context(|| format!("{}", args.kernel.display()))?;
        let lazy = LazyConfig {
            address,
            idle_timeout: args.idle_timeout,
            control,
            hold: !args.no_hold,
            conduit: broker,
            registry: args
                .name
                .as_deref()
                .map(|name| RegistryConfig::new(name, args.owner.as_deref(), registry_socket))
                .transpose()?,
        };
        return run_lazy(lazy, backend, &args.kernel, ready);
    }
    let bytes = kernel
        .map()
        .with_context(|| format!("{}", args.kernel.display()))?;
    let vm =
        Vm::create(&bytes, &config, start).with_context(|| format!("{}", args.kernel.display()))?;
    let (report, signal) =
        run_until_signal(vm).with_context(|| format!("{}", args.kernel.display()))?;
    // The guest's channels went back to the broker as it ended; now the
    // broker takes the name out of XenStore.
    drop(broker);
    describe_end(&args.kernel, &report);
    if let Some(refused) = report.net.map(|n| n.tx_refused).filter(|&n| n > 0) {
        eprintln!(
            "jitsu: {}: refused {refused} frames the guest sent with another's address",
            args.kernel.display()
        );
    }
    if args.timings {
        print_timings(&report, start_monotonic);
    }
    Ok(match signal {
        Some(signal) => 128 + signal as u8,
        None => report.exit_code(),
    })
}

fn die_with_parent() -> Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).context("PR_SET_PDEATHSIG")
}

/// What the jail keeps visible, and as whom the monitor runs in it.
struct JailPlan<'a> {
    uid: u32,
    gid: u32,
    root: &'a std::path::Path,
    registry_socket: &'a std::path::Path,
    uses_xenstore: bool,
    conduit_dir: Option<&'a std::path::Path>,
}

/// Enters the jail (see [`jitsu_runtime::jail`]); the XenStore daemon's
/// directory stays visible, read-only, as `/xenstore`, and the Conduit
/// socket directory as `/conduit`. Returns where the socket and the
/// directory are seen from inside.
fn jail(plan: JailPlan) -> Result<(PathBuf, Option<PathBuf>)> {
    let mut binds = Vec::new();
    let mut inside = plan.registry_socket.to_path_buf();
    if let (true, Some(dir), Some(file)) = (
        plan.uses_xenstore,
        plan.registry_socket.parent(),
        plan.registry_socket.file_name(),
    ) {
        binds.push((dir.to_path_buf(), "xenstore".into()));
        inside = PathBuf::from("/xenstore").join(file);
    }
    let conduit_dir = plan.conduit_dir.map(|dir| {
        binds.push((dir.to_path_buf(), "conduit".into()));
        PathBuf::from("/conduit")
    });
    let jail = jitsu_runtime::jail::Jail {
        uid: plan.uid,
        gid: plan.gid,
        root: plan.root.to_path_buf(),
        binds,
    };
    jail.enter()?;
    Ok((inside, conduit_dir))
}

/// Blocks SIGINT and SIGTERM for this thread and the threads it starts
/// (so they arrive only through the returned signalfd).
fn termination_signals() -> Result<SignalFd> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().context("blocking SIGINT/SIGTERM")?;
    SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("signalfd")
}

/// Keeps the unikernel parked, booting it on demand, until a signal or
/// until the guest ends by itself.
fn run_lazy(
    config: LazyConfig,
    backend: KvmBackend,
    kernel: &std::path::Path,
    ready: &mut Option<ReadyFd>,
) -> Result<u8> {
    let signal_fd = termination_signals()?;
    let mut supervisor =
        Supervisor::new(config, backend).with_context(|| format!("{}", kernel.display()))?;
    tracing::info!("parked; waiting for a packet or a boot command");
    if let Some(ready) = ready.take() {
        ready.report("parked");
    }
    match supervisor
        .serve(signal_fd.as_fd())
        .with_context(|| format!("{}", kernel.display()))?
    {
        Ended::Signal(signal) => Ok(128 + signal as u8),
        Ended::Guest(report) => {
            describe_end(kernel, &report);
            Ok(report.exit_code())
        }
    }
}

/// Runs the guest until it ends, or until SIGINT or SIGTERM asks the monitor
/// to stop it (then the exit status is 128 + the signal, as for a process).
fn run_until_signal(vm: Vm) -> Result<(RunReport, Option<i32>)> {
    // Before the vCPU thread exists, so that it inherits the block.
    let signal_fd = termination_signals()?;
    let running = vm.start()?;
    let mut fds = [
        PollFd::new(signal_fd.as_fd(), PollFlags::POLLIN),
        PollFd::new(running.done_fd(), PollFlags::POLLIN),
    ];
    loop {
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e).context("waiting for the guest"),
        }
        if fds[1].any().unwrap_or(false) {
            return Ok((running.wait()?, None));
        }
        if fds[0].any().unwrap_or(false) {
            let signal = signal_fd
                .read_signal()
                .ok()
                .flatten()
                .map(|s| s.ssi_signo as i32);
            return Ok((running.stop()?, signal));
        }
    }
}

fn describe_end(kernel: &std::path::Path, report: &impl GuestReport) {
    if let Some(what) = report.describe() {
        eprintln!("jitsu: {}: {what}", kernel.display());
    }
}

fn print_timings(report: &RunReport, start_monotonic: u64) {
    let t = &report.timings;
    let us = |d: Duration| d.as_micros();
    let first = t
        .first_instruction
        .map_or_else(|| "unknown".to_string(), |d| us(d).to_string());
    eprintln!(
        "jitsu: timings (us since start): vm_create={} load={} run={} first_instruction={} exit={} start_monotonic_ns={}",
        us(t.vm_create),
        us(t.load),
        us(t.run),
        first,
        us(t.exit),
        start_monotonic,
    );
}
