//! One container: a unikernel (its network and its monitor process) or a
//! pod sandbox (a `jitsu pause` process in the pod's network namespace), and
//! what is left on disk (so a later `shim delete` can clean up after a shim
//! that was killed).

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use containerd_shim::asynchronous::monitor::{monitor_subscribe, monitor_unsubscribe};
use containerd_shim::monitor::{Subject, Topic};
use jitsu_spec::{BootPolicy, Hypervisor};

use crate::conduit::ConduitName;
use crate::image::Unikernel;
use tokio::sync::watch;

use crate::monitor::{jitsu_bin, join_cgroup, monitor_command, stdio};
use crate::network::Network;
use crate::process::Process;
use crate::state::{ContainerKey, Record, StateError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

/// How long a monitor may take to check its ELF and park the VM.
const PARK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where a unikernel's container lives: its pod's network namespace and
/// Kubernetes namespace (none for `ctr run`), and its cgroup.
pub struct Placement<'a> {
    pub netns: Option<PathBuf>,
    pub pod_namespace: Option<&'a str>,
    pub cgroups_path: Option<&'a str>,
}

/// How the monitor ended: exit status and when.
pub type Exit = Option<(u32, std::time::SystemTime)>;

pub struct Container {
    pub record: Record,
    /// Boot at start instead of at the first packet.
    pub eager: bool,
    pub status: Status,
    pub pid: u32,
    pub stdout: String,
    pub stderr: String,
    pub exit: watch::Receiver<Exit>,
    pub control: PathBuf,
}

/// Set in the shim's environment (containerd's), monitors run unjailed
/// (still under seccomp): only so that `make bench` can price the jail.
const UNJAILED_FOR_BENCHMARKS: &str = "JITSU_BENCH_UNJAILED";

/// A pod sandbox's `jitsu pause` needs almost nothing.
const PAUSE_MEMORY_MAX: u64 = 16 << 20;

impl Container {
    /// Parks the unikernel: network, monitor (`jitsu-monitor --lazy`), no guest
    /// instruction yet. With `netns` (a pod's) the guest takes over the
    /// pod's `eth0`; without, it gets a TAP on the node's bridge.
    pub async fn create(
        key: ContainerKey,
        bundle: &Path,
        unikernel: Unikernel,
        rootfs_mounted: bool,
        place: Placement<'_>,
        stdio: (&str, &str),
    ) -> Result<Container, String> {
        let Placement {
            netns,
            pod_namespace,
            cgroups_path,
        } = place;
        let conduit = unikernel.spec.conduit.clone().map(|name| ConduitName {
            name,
            group: crate::conduit::group_of(pod_namespace, &key.namespace),
        });
        // Between Xen domains the guests do the rendezvous themselves, and
        // nothing on the node stands between them to enforce a policy.
        if !unikernel.spec.conduit_allow.is_empty() && unikernel.hypervisor == Hypervisor::Xen {
            return Err(
                "org.jitsu.conduit-allow cannot be enforced between Xen domains (their guests meet in XenStore, with no monitor in between); leave it out on Xen nodes"
                    .into(),
            );
        }
        let mut record = Record {
            key,
            bundle: bundle.into(),
            rootfs_mounted,
            network: Network::Sandbox { netns: None },
            process: None,
            dns_name: unikernel.spec.dns_name.clone(),
            uid_slot: None,
            cgroup: None,
            xen_domain: None,
            conduit,
        };
        claim(&record).await?;
        let xen = unikernel.hypervisor == Hypervisor::Xen;
        // A Xen guest's memory is Xen's, not the monitor's; and libxl
        // needs root, so a Xen monitor is not jailed.
        let memory_max = if xen {
            crate::cgroup::MONITOR_OVERHEAD
        } else {
            unikernel.spec.mem + crate::cgroup::MONITOR_OVERHEAD
        };
        let jailed = if xen || std::env::var_os(UNJAILED_FOR_BENCHMARKS).is_some() {
            Ok(())
        } else {
            record.prepare_jail()
        };
        let prepared = jailed.and_then(|()| record.make_cgroup(cgroups_path, memory_max));
        if let Err(e) = prepared {
            record.clean_up().await;
            return Err(e);
        }
        if let Some(name) = &record.dns_name {
            let domain = record.uid_slot.map(jitsu_registry::identity::domid_of_slot);
            let claimed =
                crate::state::claim_registry_entry(name, &record.key.describe(), domain).await;
            if let Err(e) = claimed {
                record.clean_up().await;
                return Err(e);
            }
        }
        match Network::plug(&record.key, netns, unikernel.hypervisor).await {
            Ok(network) => record.network = network,
            Err(e) => {
                record.clean_up().await;
                return Err(e);
            }
        }
        if xen {
            record.xen_domain = crate::monitor::xen_domain_name(&record);
        }
        if let Err(e) = record.save() {
            record.clean_up().await;
            return Err(format!("saving state: {e}"));
        }
        let (ready, ready_tx) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(pipe) => pipe,
            Err(e) => {
                record.clean_up().await;
                return Err(format!("a pipe for the monitor: {e}"));
            }
        };
        let spec = &unikernel.spec;
        let cmd = monitor_command(
            unikernel.hypervisor,
            spec,
            &record,
            unikernel.kernel.as_fd(),
            ready_tx.as_fd(),
        );
        let spawned = Container::spawn(record, cmd, stdio).await;
        drop(ready_tx);
        drop(unikernel.kernel);
        let mut c = spawned?;
        c.eager = spec.boot == BootPolicy::Eager;
        if let Err(e) = c.wait_until_parked(ready).await {
            c.record.clean_up().await;
            return Err(e);
        }
        Ok(c)
    }

    /// Waits for the monitor's word on `ready`: it has checked the ELF and
    /// parked the VM, so a task that is created works, and one that cannot
    /// (a bad ELF in a good image) fails here with the monitor's reason.
    async fn wait_until_parked(&self, ready: OwnedFd) -> Result<(), String> {
        use tokio::io::AsyncReadExt;
        let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(ready)
            .map_err(|e| format!("the monitor's readiness pipe: {e}"))?;
        let mut said = String::new();
        // Bounded: a line of text, then the monitor closes its end.
        let read = tokio::time::timeout(PARK_TIMEOUT, async {
            (&mut pipe).take(4096).read_to_string(&mut said).await
        });
        match read.await {
            Err(_) => return Err(format!("the monitor did not park within {PARK_TIMEOUT:?}")),
            Ok(Err(e)) => return Err(format!("reading the monitor's readiness: {e}")),
            Ok(Ok(_)) => {}
        }
        match said.trim_end() {
            "parked" => Ok(()),
            line => match line.strip_prefix("error: ") {
                Some(reason) => Err(format!("the unikernel cannot be parked: {reason}")),
                None => {
                    let mut exit = self.exit.clone();
                    let code = tokio::time::timeout(
                        std::time::Duration::from_secs(1),
                        exit.wait_for(Option::is_some),
                    )
                    .await
                    .ok()
                    .and_then(|e| e.ok().and_then(|e| e.map(|(code, _)| code)));
                    Err(match code {
                        Some(code) => {
                            format!("the monitor exited with status {code} before parking")
                        }
                        None => format!(
                            "the monitor ended its readiness report without parking: {line:?}"
                        ),
                    })
                }
            },
        }
    }

    /// A pod sandbox: a `jitsu pause` process in the pod's namespace, whose
    /// `/proc/<pid>/ns/net` containerd gives the pod's other containers.
    pub async fn create_sandbox(
        key: ContainerKey,
        bundle: &Path,
        netns: Option<PathBuf>,
        cgroups_path: Option<&str>,
        stdio: (&str, &str),
    ) -> Result<Container, String> {
        let mut record = Record {
            key,
            bundle: bundle.into(),
            rootfs_mounted: false,
            network: Network::Sandbox {
                netns: netns.clone(),
            },
            process: None,
            dns_name: None,
            uid_slot: None,
            cgroup: None,
            xen_domain: None,
            conduit: None,
        };
        claim(&record).await?;
        if let Err(e) = record.make_cgroup(cgroups_path, PAUSE_MEMORY_MAX) {
            record.clean_up().await;
            return Err(e);
        }
        let mut cmd = std::process::Command::new(jitsu_bin());
        cmd.args(["pause", "--die-with-parent"]);
        if let Some(netns) = &netns {
            cmd.arg("--netns").arg(netns);
        }
        Container::spawn(record, cmd, stdio).await
    }

    /// Starts `cmd` as the container's process and follows its exit.
    async fn spawn(
        mut record: Record,
        mut cmd: std::process::Command,
        (stdout, stderr): (&str, &str),
    ) -> Result<Container, String> {
        // The shim reaps every child itself (it is a subreaper); our exit
        // status comes from its monitor. Subscribe before the child exists so
        // that not even an immediate exit is missed.
        let mut exits = match monitor_subscribe(Topic::Pid).await {
            Ok(s) => s,
            Err(e) => {
                record.clean_up().await;
                return Err(format!("subscribing to exits: {e}"));
            }
        };
        if let Some(cgroup) = &record.cgroup {
            join_cgroup(&mut cmd, cgroup.procs_files());
        }
        let spawned = stdio(stdout).and_then(|out| {
            let err = stdio(stderr)?;
            cmd.stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .map_err(|e| format!("starting {:?}: {e}", cmd.get_program()))
        });
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = monitor_unsubscribe(exits.id).await;
                record.clean_up().await;
                return Err(e);
            }
        };
        let pid = child.id();
        record.process = Process::spawned(pid);
        if let Err(e) = record.save() {
            // Without the record a later cleanup could not find the process.
            tracing::warn!(%e, "saving the container's process");
        }
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            while let Some(event) = exits.rx.recv().await {
                if matches!(event.subject, Subject::Pid(p) if p == pid as i32) {
                    let _ = tx.send(Some((event.exit_code as u32, std::time::SystemTime::now())));
                    break;
                }
            }
            let _ = monitor_unsubscribe(exits.id).await;
        });
        let control = record.key.control_path();
        Ok(Container {
            record,
            eager: false,
            status: Status::Created,
            pid,
            stdout: stdout.into(),
            stderr: stderr.into(),
            exit: rx,
            control,
        })
    }

    /// The pod's network namespace, if this is a pod sandbox that has one.
    pub fn sandbox_netns(&self) -> Option<&PathBuf> {
        match &self.record.network {
            Network::Sandbox { netns } => netns.as_ref(),
            _ => None,
        }
    }

    pub fn exit_now(&self) -> Exit {
        *self.exit.borrow()
    }
}

/// Claims the container's state directory. Refused if the container
/// exists already; then nothing of the other one is touched, and only what
/// this call was given (its own rootfs mount) is undone.
async fn claim(record: &Record) -> Result<(), String> {
    match record.claim() {
        Ok(()) => Ok(()),
        Err(e @ StateError::Exists(_)) => {
            record.unmount_rootfs();
            Err(e.to_string())
        }
        Err(e) => {
            record.clean_up().await;
            Err(format!("saving state: {e}"))
        }
    }
}

/// Boots a parked unikernel now (an eager one, at start). Its control
/// socket has served since create.
pub async fn boot(control: PathBuf) -> Result<(), String> {
    tokio::task::spawn_blocking(move || jitsu_runtime::control::request(&control, "boot"))
        .await
        .map_err(|e| format!("eager boot: {e}"))?
        .map(|_| ())
        .map_err(|e| format!("eager boot: {e}"))
}
