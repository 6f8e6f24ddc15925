//! The processes a container runs, and their command lines: a unikernel's
//! monitor (`jitsu-monitor` on KVM, jailed; `jitsu-xen-monitor` in a Xen
//! dom0, which needs root for libxl), and a pod sandbox's `jitsu pause`.
//! Which hypervisor a container gets is decided here too: the node's, or
//! the one the image (or `org.jitsu.hypervisor`) requires, if the node has it.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use jitsu_spec::{Hypervisor, UnikernelSpec};

use crate::network::bridge::{BRIDGE, GATEWAY, PREFIX};
use crate::network::pod::PodLink;
use crate::network::Network;
use crate::state::Record;

/// The hypervisor for a unikernel that requires `required` (None: any).
pub fn choose(required: Option<Hypervisor>) -> Result<Hypervisor, String> {
    let node = Hypervisor::of_this_node();
    match required {
        None => Ok(node),
        Some(h) if h == node => Ok(h),
        Some(Hypervisor::Xen) => Err(
            "the unikernel requires Xen (org.jitsu.hypervisor=xen), and this node is not a Xen dom0"
                .into(),
        ),
        Some(Hypervisor::Kvm) => Err(
            "the unikernel requires KVM (org.jitsu.hypervisor=kvm), and this node is a Xen dom0, which runs unikernels as Xen domains"
                .into(),
        ),
    }
}

use jitsu_runtime::args::our_binary;

/// The monitor of a unikernel on `hypervisor`.
pub fn monitor_bin(hypervisor: Hypervisor) -> PathBuf {
    match hypervisor {
        Hypervisor::Kvm => our_binary("JITSU_MONITOR", "jitsu-monitor"),
        Hypervisor::Xen => our_binary("JITSU_XEN_MONITOR", "jitsu-xen-monitor"),
    }
}

/// `jitsu`, for a pod sandbox's `jitsu pause`.
pub fn jitsu_bin() -> PathBuf {
    our_binary("JITSU_BIN", "jitsu")
}

/// A container's stdout or stderr: containerd's FIFO (or file), or nothing.
pub fn stdio(path: &str) -> Result<Stdio, String> {
    if path.is_empty() {
        return Ok(Stdio::null());
    }
    // Read-write so that opening a FIFO never waits for its reader.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))?;
    Ok(Stdio::from(file))
}

/// The Xen domain of the container `record`: named after its address
/// lease (unique on the node while it is held) and its id (for people).
pub fn xen_domain_name(record: &Record) -> Option<String> {
    let ip = record.network.ip()?;
    let id: String = record
        .key
        .id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    Some(format!("jitsu-{ip}-{id}"))
}

/// The monitor's command for the unikernel of `record`, parked (`--lazy`);
/// it reports on `ready` (the write end of a pipe, inherited) once parked,
/// and inherits the kernel, already opened in the image, as `kernel`.
pub fn monitor_command(
    hypervisor: Hypervisor,
    spec: &UnikernelSpec,
    record: &Record,
    kernel: BorrowedFd<'_>,
    ready: BorrowedFd<'_>,
) -> Command {
    let mut cmd = Command::new(monitor_bin(hypervisor));
    cmd.args(["--lazy", "--die-with-parent", "--mem"])
        .arg(spec.mem.to_string())
        .arg("--control")
        .arg(record.key.control_path())
        .arg("--ready-fd")
        .arg(ready.as_raw_fd().to_string());
    inherit(&mut cmd, ready.as_raw_fd());
    cmd.arg("--kernel-fd").arg(kernel.as_raw_fd().to_string());
    inherit(&mut cmd, kernel.as_raw_fd());
    match hypervisor {
        Hypervisor::Kvm => kvm_args(&mut cmd, record),
        Hypervisor::Xen => xen_args(&mut cmd, record),
    }
    if let Some(t) = spec.idle_timeout {
        cmd.arg("--idle-timeout")
            .arg(format!("{}ms", t.as_millis()));
    }
    if let Some(name) = &spec.dns_name {
        cmd.args(["--name", name, "--owner", &record.key.describe()]);
    }
    match (&record.conduit, hypervisor) {
        (Some(conduit), Hypervisor::Kvm) => {
            cmd.args([
                "--conduit",
                &conduit.name,
                "--conduit-group",
                &conduit.group,
            ])
            .arg("--conduit-dir")
            .arg(crate::conduit::socket_dir());
            if !spec.conduit_allow.is_empty() {
                cmd.args(["--conduit-allow", &spec.conduit_allow]);
            }
        }
        (Some(conduit), Hypervisor::Xen) => {
            cmd.args(["--conduit", &conduit.name]);
        }
        (None, _) => {}
    }
    // A name for its messages only: the monitor reads the descriptor.
    let kernel_name = spec.kernel_for(hypervisor).unwrap_or(&spec.kernel);
    cmd.arg(Path::new("/").join(kernel_name));
    if !spec.cmdline.is_empty() {
        cmd.arg("--").args(spec.cmdline.split_whitespace());
    }
    cmd
}

/// KVM: the jail, and the TAP the shim made (the node's bridge, or the pod's).
fn kvm_args(cmd: &mut Command, record: &Record) {
    if let Some(slot) = record.uid_slot {
        let (uid, gid) = crate::identity::ids(slot);
        cmd.args(["--jail-uid", &uid.to_string()])
            .args(["--jail-gid", &gid.to_string()])
            .arg("--jail-root")
            .arg(record.key.jail_root());
    }
    match &record.network {
        Network::Bridge { tap, ip } => {
            cmd.args(["--net", tap, "--ip", &format!("{ip}/{PREFIX}")])
                .args(["--gw", &GATEWAY.to_string()]);
        }
        Network::Pod { netns, tap, link } => {
            cmd.arg("--netns").arg(netns);
            pod_link_args(cmd, tap, link);
        }
        Network::Sandbox { .. } | Network::Vif { .. } | Network::XenPod { .. } => {}
    }
}

/// Xen: the bridge the domain's vif joins (the node's, or the pod's, which
/// the shim made and the monitor leaves unaddressed), and the domain's name.
fn xen_args(cmd: &mut Command, record: &Record) {
    match &record.network {
        Network::Vif { ip } => {
            cmd.args(["--net", BRIDGE, "--ip", &format!("{ip}/{PREFIX}")])
                .args(["--gw", &GATEWAY.to_string()]);
        }
        Network::XenPod { links, link, .. } => pod_link_args(cmd, &links.bridge, link),
        Network::Sandbox { .. } | Network::Bridge { .. } | Network::Pod { .. } => {}
    }
    if let Some(name) = &record.xen_domain {
        cmd.args(["--domain-name", name]);
    }
}

/// Both monitors' flags for a guest that takes over a pod's link, on the
/// interface `net` (a KVM TAP, a Xen bridge).
fn pod_link_args(cmd: &mut Command, net: &str, link: &PodLink) {
    cmd.args(["--net", net])
        .args(["--ip", &format!("{}/{}", link.ip, link.prefix)])
        .args(["--mac", &link.mac_string()]);
    if let Some(gw) = link.gateway {
        cmd.args(["--gw", &gw.to_string()]);
    }
}

/// Destroys what a killed Xen monitor left: its domain (and with it the
/// vif). An error leaves the domain (and so its address) in place.
pub async fn destroy_xen_domain(name: &str) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(monitor_bin(Hypervisor::Xen));
    cmd.args(["--destroy-domain", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    let ran = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.status()).await;
    match ran {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("destroying Xen domain {name}: {status}")),
        Ok(Err(e)) => Err(format!("destroying Xen domain {name}: {e}")),
        Err(_) => Err(format!("destroying Xen domain {name} took over a minute")),
    }
}

/// Puts the child in the cgroup whose `cgroup.procs` files are `procs`
/// before it execs, so that everything it allocates is charged there.
pub fn join_cgroup(cmd: &mut Command, procs: Vec<std::ffi::CString>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: runs in the forked child before exec; open, write and close
    // are async-signal-safe, and the paths were made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for file in &procs {
                let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let error = std::io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(error);
                }
            }
            Ok(())
        });
    }
}

/// Lets the child keep `fd` across exec (everything the shim opens is
/// close-on-exec, so no other child inherits it).
fn inherit(cmd: &mut Command, fd: RawFd) {
    use std::os::unix::process::CommandExt;
    // SAFETY: runs in the forked child before exec; fcntl is
    // async-signal-safe and touches only the child's descriptor table.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ContainerKey;

    #[test]
    fn the_node_runs_what_it_has_and_refuses_the_other_by_name() {
        let node = Hypervisor::of_this_node();
        assert_eq!(choose(None), Ok(node));
        assert_eq!(choose(Some(node)), Ok(node));
        let other = match node {
            Hypervisor::Kvm => Hypervisor::Xen,
            Hypervisor::Xen => Hypervisor::Kvm,
        };
        let refused = choose(Some(other)).unwrap_err();
        assert!(
            refused.contains("org.jitsu.hypervisor") && refused.contains(other.name()),
            "{refused}"
        );
    }

    fn record(id: &str, ip: std::net::Ipv4Addr) -> Record {
        Record {
            key: ContainerKey {
                containerd: "/run/containerd/containerd.sock".into(),
                namespace: "default".into(),
                id: id.into(),
            },
            bundle: "/bundle".into(),
            rootfs_mounted: false,
            network: Network::Vif { ip },
            process: None,
            dns_name: None,
            uid_slot: None,
            cgroup: None,
            xen_domain: None,
            conduit: None,
        }
    }

    /// Xen takes 1 to 64 of a-z, A-Z, 0-9, '-', '_', '.'; the address keeps
    /// two containers with the same id prefix apart.
    #[test]
    fn domain_names_are_valid_for_xen_and_unique_by_address() {
        let long =
            "a/very:long id with spaces and symbols that goes on and on past forty".to_string();
        let a = xen_domain_name(&record(&long, "10.77.255.254".parse().unwrap())).unwrap();
        let b = xen_domain_name(&record(&long, "10.77.0.2".parse().unwrap())).unwrap();
        assert_ne!(a, b);
        for name in [&a, &b] {
            assert!((1..=64).contains(&name.len()), "{name}");
            assert!(
                name.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c)),
                "{name}"
            );
        }
        let mut sandbox = record("x", "10.77.0.3".parse().unwrap());
        sandbox.network = Network::Sandbox { netns: None };
        assert_eq!(xen_domain_name(&sandbox), None, "no address, no domain");
    }

    /// A pod's domain takes the pod's address, MAC and gateway, on the
    /// pod's own bridge (never the node's, whose gateway it would get).
    #[test]
    fn a_xen_pod_gets_the_pods_link_on_a_bridge_of_its_own() {
        use crate::network::xen_pod::XenPodLinks;
        let mut pod = record("c1", "10.77.0.9".parse().unwrap());
        let links = XenPodLinks::of(&pod.key);
        pod.network = Network::XenPod {
            netns: "/run/netns/cni-1".into(),
            links: links.clone(),
            link: PodLink {
                mac: [2, 0x42, 10, 99, 0, 7],
                ip: "10.99.0.7".parse().unwrap(),
                prefix: 24,
                gateway: Some("10.99.0.1".parse().unwrap()),
                mtu: 1450,
            },
        };
        let mut cmd = Command::new("jitsu-xen-monitor");
        xen_args(&mut cmd, &pod);
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let expected = [
            "--net",
            links.bridge.as_str(),
            "--ip",
            "10.99.0.7/24",
            "--mac",
            "02:42:0a:63:00:07",
            "--gw",
            "10.99.0.1",
        ];
        assert_eq!(args, expected);
        assert_ne!(links.bridge, BRIDGE);
        for name in [&links.bridge, &links.outer, &links.inner] {
            assert!(name.len() <= 15, "{name}: longer than IFNAMSIZ allows");
        }
        let other = XenPodLinks::of(&record("c2", "10.77.0.9".parse().unwrap()).key);
        assert_ne!(other, links, "each container has its own");
    }
}
