//! A Kubernetes pod's network for a Xen domain. netback makes each domain's
//! vif in dom0's own namespace, where libxl's hotplug script and the
//! monitor work on it; the pod's address lives in the pod's namespace. A
//! veth pair joins the two: its inner end takes `eth0`'s frames (the same
//! redirects as a KVM pod's TAP, `pod.rs`), its outer end is a port of a
//! bridge of the pod's own in dom0, which the vif and the monitor's
//! stand-in TAP join. The bridge holds no address and neither dom0 end
//! speaks IPv6, so dom0's own stack stays off the pod's wire.

use std::os::fd::AsRawFd;
use std::path::Path;

use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth};
use serde::{Deserialize, Serialize};

use super::pod::{self, PodLink, Port};
use super::{delete_link, handle, index, NetResult};
use crate::state::ContainerKey;

/// A Xen pod's interfaces: in dom0 the bridge and the pair's outer end, in
/// the pod's namespace the inner end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XenPodLinks {
    pub bridge: String,
    pub outer: String,
    pub inner: String,
}

impl XenPodLinks {
    /// Named after the container's digest, as a KVM pod's TAP is.
    pub fn of(key: &ContainerKey) -> XenPodLinks {
        let digest = &key.digest()[..12];
        XenPodLinks {
            bridge: format!("jb{digest}"),
            outer: format!("jv{digest}"),
            inner: pod::tap_name(key),
        }
    }
}

/// Wires the pod at `netns` to a new bridge in dom0 (see above) and returns
/// `eth0`'s link, for the guest to take over. A failure undoes what this
/// call made, and only that.
pub async fn wire(netns: &Path, links: &XenPodLinks) -> NetResult<PodLink> {
    let handle = handle().await?;
    for name in [&links.bridge, &links.outer] {
        if index(&handle, name).await?.is_some() {
            return Err(format!(
                "interface {name} exists already and is not this container's"
            ));
        }
    }
    let wired = async {
        make_pair(&handle, netns, links).await?;
        let link = pod::wire_port(netns, &links.inner, Port::Existing).await?;
        if let Err(e) = make_bridge(&handle, links, link.mtu).await {
            let _ = pod::unwire(netns, &links.inner).await;
            return Err(e);
        }
        Ok(link)
    }
    .await;
    if wired.is_err() {
        let _ = remove_dom0_side(&handle, links).await;
    }
    wired
}

/// Undoes `wire` (the domain, and so its vif, must be gone already).
pub async fn unwire(netns: &Path, links: &XenPodLinks) -> NetResult<()> {
    remove_dom0_side(&handle().await?, links).await?;
    pod::unwire(netns, &links.inner).await
}

/// Deleting the outer end deletes the inner one too, wherever it is.
async fn remove_dom0_side(handle: &Handle, links: &XenPodLinks) -> NetResult<()> {
    delete_link(handle, &links.outer).await?;
    delete_link(handle, &links.bridge).await
}

/// The veth pair, its inner end moved into the pod's namespace.
async fn make_pair(handle: &Handle, netns: &Path, links: &XenPodLinks) -> NetResult<()> {
    let pair = format!("the veth pair {}/{}", links.outer, links.inner);
    let ns = std::fs::File::open(netns)
        .map_err(|e| format!("pod network namespace {}: {e}", netns.display()))?;
    handle
        .link()
        .add(LinkVeth::new(&links.outer, &links.inner).build())
        .execute()
        .await
        .map_err(|e| format!("creating {pair}: {e}"))?;
    no_ipv6(&links.outer)?;
    let inner = index(handle, &links.inner)
        .await?
        .ok_or_else(|| format!("{pair} vanished"))?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(inner)
                .setns_by_fd(ns.as_raw_fd())
                .build(),
        )
        .execute()
        .await
        .map_err(|e| format!("moving {} into the pod: {e}", links.inner))
}

/// The pod's bridge, with the outer end (at the pod's MTU, which the
/// bridge then takes, and the monitor tells the guest) plugged in; both up.
async fn make_bridge(handle: &Handle, links: &XenPodLinks, mtu: u32) -> NetResult<()> {
    let name = &links.bridge;
    handle
        .link()
        .add(LinkBridge::new(name).build())
        .execute()
        .await
        .map_err(|e| format!("creating {name}: {e}"))?;
    no_ipv6(name)?;
    let bridge = index(handle, name)
        .await?
        .ok_or_else(|| format!("{name} vanished"))?;
    let outer = index(handle, &links.outer)
        .await?
        .ok_or_else(|| format!("{} vanished", links.outer))?;
    for (message, what) in [
        (
            LinkUnspec::new_with_index(outer)
                .mtu(mtu)
                .controller(bridge)
                .up()
                .build(),
            &links.outer,
        ),
        (LinkUnspec::new_with_index(bridge).up().build(), name),
    ] {
        handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|e| format!("bringing {what} up: {e}"))?;
    }
    Ok(())
}

/// Keeps dom0's IPv6 (a link-local address, its router solicitations and
/// reports) off the interface `name`, before it is up.
fn no_ipv6(name: &str) -> NetResult<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    match std::fs::write(&path, "1") {
        Ok(()) => Ok(()),
        // A kernel without IPv6 has none to keep off.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{path}: {e}")),
    }
}
