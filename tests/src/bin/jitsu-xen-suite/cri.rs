//! The kubelet's path on Xen: Debian's containerd in dom0 with its CRI
//! plugin, a CNI bridge network and our shim as the `jitsu` handler, driven
//! by a CRI client as the kubelet drives it. A pod's unikernel is a Xen
//! domain on the pod's own address (CNI's, on the pod's `eth0`), parked
//! until its first request and parked again when idle.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use jitsu_e2e::cri::{self, CriClient, CriNode, K8S_NAMESPACE};
use jitsu_e2e::http::get;
use jitsu_e2e::lazy::try_request;
use k8s_cri::v1::ContainerState;
use libtest_mimic::Failed;

use crate::containerd::{await_domain, domain_of, hello_xen, Dom0Containerd};
use crate::{env_path, leaves_nothing, text, xenstore, Result, TIMEOUT};

const HELLO: &str = "docker.io/jitsu/hello:xen";
/// The CNI bridge plugin's bridge (`cri::cni_conf`), made in dom0.
const CNI_BRIDGE: &str = "cni-jitsu";

/// containerd with the CRI plugin and a CNI network, and a CRI client.
struct Dom0Cri {
    cri: CriClient,
    containerd: Dom0Containerd,
}

impl Dom0Cri {
    fn start() -> std::result::Result<Dom0Cri, Failed> {
        let containerd = Dom0Containerd::start_with(|dir| {
            let net = dir.join("net.d");
            std::fs::create_dir_all(&net)?;
            std::fs::write(net.join("10-jitsu-test.conflist"), cri::cni_conf(dir))?;
            Ok(Some(cri::config_v2(&net)))
        })?;
        let pause = std::fs::read(env_path("JITSU_PAUSE"))?;
        let archive = containerd.dir.path().join("pause.tar");
        std::fs::write(&archive, cri::pause_archive(&pause))?;
        containerd.ctr_ok(&[
            "-n",
            K8S_NAMESPACE,
            "images",
            "import",
            archive.to_str().unwrap(),
        ])?;
        let cri = CriClient::connect(&containerd.socket);
        Ok(Dom0Cri { cri, containerd })
    }
}

impl Drop for Dom0Cri {
    /// Pods first, through CRI (their namespaces are outside the temp
    /// dir), then CNI's bridge, then containerd.
    fn drop(&mut self) {
        for pod in self.cri.pods() {
            let _ = self.cri.remove_pod(&pod);
        }
        let _ = Command::new("ip")
            .args(["link", "del", CNI_BRIDGE])
            .status();
    }
}

/// The shim's record of container `id`: its directory and its network
/// (`Network::XenPod`: the pod's namespace and the links made).
fn xen_pod_record(
    containerd: &Dom0Containerd,
    id: &str,
) -> std::result::Result<(PathBuf, serde_json::Value), Failed> {
    let records = std::fs::read_dir(containerd.state().join("containers"))?;
    records
        .flatten()
        .find_map(|dir| {
            let json = std::fs::read(dir.path().join("state.json")).ok()?;
            let record: serde_json::Value = serde_json::from_slice(&json).ok()?;
            (record["key"]["id"] == id)
                .then(|| Some((dir.path(), record["network"].get("XenPod")?.clone())))
                .flatten()
        })
        .ok_or_else(|| format!("no XenPod network recorded for {id}").into())
}

/// The monitor's `status`, from its control socket in the record's folder.
fn monitor_status(dir: &Path) -> std::result::Result<serde_json::Value, Failed> {
    let reply = try_request(&dir.join("control.sock"), "status")?;
    Ok(serde_json::from_str(&reply)?)
}

/// Waits until the monitor says it has parked a fresh domain (its second
/// parking): the domain's id.
fn await_reparked(dir: &Path) -> std::result::Result<u64, Failed> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let status = monitor_status(dir).ok();
        if let Some(s) = &status {
            if s["state"] == "parked" && s["generation"].as_u64() >= Some(2) {
                return s["domid"].as_u64().ok_or_else(|| format!("{s}").into());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("never parked again; last status {status:?}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A pod whose unikernel is a parked Xen domain, as CRI and the shim see it.
struct XenPod {
    pod: String,
    container: String,
    ip: Ipv4Addr,
    domid: u32,
    /// The shim's folder for the container (its monitor's control socket).
    dir: PathBuf,
    network: serde_json::Value,
}

impl XenPod {
    /// RunPodSandbox, CreateContainer and StartContainer of the hello image
    /// on the `jitsu` handler, as the kubelet starts a pod.
    fn start(node: &mut Dom0Cri, name: &str) -> std::result::Result<XenPod, Failed> {
        let sandbox = CriNode::pod_config(name, &[]);
        let pod = node.cri.run_pod(&sandbox, "jitsu")?;
        let container = node
            .cri
            .create_container(&pod, &sandbox, "hello", HELLO, &[])?;
        node.cri.start_container(&container)?;
        let ip = node.cri.pod_ip(&pod).parse()?;
        let (_, domid, _) = await_domain(&container, |(_, _, flags)| flags.contains('p'))?;
        let (dir, network) = xen_pod_record(&node.containerd, &container)?;
        Ok(XenPod {
            pod,
            container,
            ip,
            domid,
            dir,
            network,
        })
    }

    /// The domain was told the pod's address, and its vif has `eth0`'s MAC.
    fn check_it_is_the_pod(&self) -> Result {
        let home = format!("/local/domain/{}", self.domid);
        let told = xenstore(&["xenstore-read", &format!("{home}/jitsu/ipv4")])?;
        if !told.trim().starts_with(&format!("{}/", self.ip)) {
            return Err(format!("pod {}: its domain was told {told:?}", self.ip).into());
        }
        let netns = self.network["netns"].as_str().ok_or("no netns")?;
        let vif_mac = xenstore(&["xenstore-read", &format!("{home}/device/vif/0/mac")])?;
        if vif_mac.trim() != eth0_mac(netns)? {
            return Err(format!("the vif's MAC {vif_mac:?} is not eth0's").into());
        }
        Ok(())
    }

    fn boots(&self) -> std::result::Result<u64, Failed> {
        monitor_status(&self.dir)?["boots"]
            .as_u64()
            .ok_or_else(|| "no boots in the status".into())
    }

    /// RemovePodSandbox; then no domain, bridge, veth or namespace is left.
    fn remove(self, node: &mut Dom0Cri) -> Result {
        node.cri.remove_pod(&self.pod)?;
        let deadline = Instant::now() + TIMEOUT;
        while domain_of(&self.container).is_some() {
            if Instant::now() > deadline {
                return Err("the domain outlived its pod".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for link in ["bridge", "outer"] {
            let name = self.network["links"][link].as_str().unwrap_or_default();
            let shown = Command::new("ip").args(["link", "show", name]).output()?;
            if name.is_empty() || shown.status.success() {
                return Err(format!("the pod's {link} {name:?} outlived it").into());
            }
        }
        let netns = self.network["netns"].as_str().unwrap_or_default();
        if Path::new(netns).exists() {
            return Err(format!("the pod's namespace {netns} outlived it").into());
        }
        Ok(())
    }
}

/// The MAC of `eth0` in the namespace at `netns`.
fn eth0_mac(netns: &str) -> std::result::Result<String, Failed> {
    let out = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["ip", "-br", "link", "show", "eth0"])
        .output()?;
    text(&out.stdout)
        .split_whitespace()
        .nth(2)
        .map(String::from)
        .ok_or_else(|| format!("eth0 in {netns}: {}", text(&out.stderr)).into())
}

fn expect_one_syn_answer(ip: Ipv4Addr, when: &str) -> Result {
    let (reply, retrans) = get(SocketAddr::from((ip, 80)));
    if !reply.starts_with("HTTP/1.1 200") || retrans != 0 {
        return Err(format!("{when}: {retrans} retransmissions, {reply:?}").into());
    }
    Ok(())
}

/// Two pods on the `jitsu` handler, as the kubelet starts them: each
/// domain is parked on its pod's address and MAC, on a bridge of its own. A
/// request to one is answered at its first SYN and boots that one alone;
/// idle, a fresh domain is parked while CRI still reports the container
/// running, and answers too. Removing the pods leaves no domain, vif,
/// bridge, veth, namespace or file of the shim's.
pub fn pods_are_xen_domains_on_their_own_addresses() -> Result {
    let mut node = Dom0Cri::start()?;
    let result = leaves_nothing(|| {
        node.containerd.import_in(
            K8S_NAMESPACE,
            HELLO,
            &[("--xen-kernel", hello_xen())],
            &["--idle-timeout", "2s"],
        )?;
        node.cri.wait_for_image(HELLO);
        let a = XenPod::start(&mut node, "hello-a")?;
        let b = XenPod::start(&mut node, "hello-b")?;
        a.check_it_is_the_pod()?;
        b.check_it_is_the_pod()?;
        if a.network["links"]["bridge"] == b.network["links"]["bridge"] {
            return Err("two pods on one bridge".into());
        }

        expect_one_syn_answer(a.ip, "pod a's first request")?;
        if b.boots()? != 0 {
            return Err("a request to pod a booted pod b".into());
        }
        let again = await_reparked(&a.dir)?;
        if again == u64::from(a.domid) {
            return Err(format!("parked again in the same domain {}", a.domid).into());
        }
        let (state, why) = node.cri.container_state(&a.container);
        if state != ContainerState::ContainerRunning {
            return Err(format!("after the idle parking CRI says {state:?} ({why})").into());
        }
        expect_one_syn_answer(a.ip, &format!("after the idle parking (domain {again})"))?;
        expect_one_syn_answer(b.ip, "pod b's first request")?;
        a.remove(&mut node)?;
        b.remove(&mut node)
    });
    node.containerd.verdict(result)
}
