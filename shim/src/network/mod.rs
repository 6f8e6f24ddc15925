//! The guest's network: on the node's own bridge (`ctr run`, no CNI) or in
//! a Kubernetes pod's namespace, wired to the pod's `eth0` (a KVM guest's
//! TAP beside it, a Xen domain's vif through a bridge in dom0).

pub mod bridge;
pub mod pod;
pub mod xen_pod;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use futures_util::TryStreamExt;
use jitsu_runtime::tap::Tap;
use jitsu_spec::Hypervisor;
use rtnetlink::{new_connection, Handle};
use serde::{Deserialize, Serialize};

use crate::state::{state_dir, ContainerKey};
use bridge::Ipam;
use pod::PodLink;
use xen_pod::XenPodLinks;

pub type NetResult<T> = Result<T, String>;

/// Where a container's frames go.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Network {
    /// A pod sandbox: it only holds the pod's namespace (if the pod has one).
    Sandbox { netns: Option<PathBuf> },
    /// A TAP on the node's `jitsu0` bridge, an address from the node range.
    Bridge { tap: String, ip: Ipv4Addr },
    /// A Xen domain's vif on the node's `jitsu0` bridge (the monitor and
    /// libxl make it), an address from the node range.
    Vif { ip: Ipv4Addr },
    /// A TAP in the pod's namespace, joined to its `eth0`.
    Pod {
        netns: PathBuf,
        tap: String,
        link: PodLink,
    },
    /// A Xen domain's vif on a bridge of the pod's own in dom0, joined to
    /// the pod's `eth0` by a veth pair.
    XenPod {
        netns: PathBuf,
        links: XenPodLinks,
        link: PodLink,
    },
}

impl Network {
    /// The guest's address, if it has one.
    pub fn ip(&self) -> Option<Ipv4Addr> {
        match self {
            Network::Sandbox { .. } => None,
            Network::Bridge { ip, .. } | Network::Vif { ip } => Some(*ip),
            Network::Pod { link, .. } | Network::XenPod { link, .. } => Some(link.ip),
        }
    }

    /// The container's network: in the pod's namespace `netns`, else on the
    /// node's bridge. A failure undoes what this call made, and only that.
    pub async fn plug(
        key: &ContainerKey,
        netns: Option<PathBuf>,
        hypervisor: Hypervisor,
    ) -> NetResult<Network> {
        match (netns, hypervisor) {
            (Some(netns), Hypervisor::Xen) => {
                let links = XenPodLinks::of(key);
                let link = xen_pod::wire(&netns, &links).await?;
                Ok(Network::XenPod { netns, links, link })
            }
            (None, Hypervisor::Xen) => {
                let ip = Ipam::new(&state_dir()).allocate(&key.describe())?;
                Ok(Network::Vif { ip })
            }
            (netns, Hypervisor::Kvm) => Network::plug_tap(key, netns).await,
        }
    }

    async fn plug_tap(key: &ContainerKey, netns: Option<PathBuf>) -> NetResult<Network> {
        match netns {
            Some(netns) => {
                let tap = pod::tap_name(key);
                let link = pod::wire(&netns, &tap).await?;
                Ok(Network::Pod { netns, tap, link })
            }
            None => {
                let ipam = Ipam::new(&state_dir());
                let ip = ipam.allocate(&key.describe())?;
                // Named after the address it was leased with: no other
                // container can hold the same name at the same time.
                let tap = bridge::tap_name(ip);
                match bridge::plug_tap(&tap).await {
                    Ok(()) => Ok(Network::Bridge { tap, ip }),
                    Err(e) => {
                        ipam.release(ip);
                        Err(e)
                    }
                }
            }
        }
    }

    /// Undoes `plug`: the TAP first, then its address, so that an address
    /// is free again only once no TAP carries its name.
    pub async fn tear_down(&self) -> NetResult<()> {
        match self {
            Network::Sandbox { .. } => Ok(()),
            Network::Bridge { tap, ip } => {
                bridge::unplug_tap(tap).await?;
                Ipam::new(&state_dir()).release(*ip);
                Ok(())
            }
            Network::Vif { ip } => {
                Ipam::new(&state_dir()).release(*ip);
                Ok(())
            }
            Network::Pod { netns, tap, .. } => pod::unwire(netns, tap).await,
            Network::XenPod { netns, links, .. } => xen_pod::unwire(netns, links).await,
        }
    }
}

/// Creates the persistent TAP `name`, which must not exist: an interface of
/// that name is somebody else's, and attaching to it would take it over.
async fn create_tap(handle: &Handle, name: &str) -> NetResult<u32> {
    if index(handle, name).await?.is_some() {
        return Err(format!(
            "interface {name} exists already and is not this container's"
        ));
    }
    Tap::create_persistent(name).map_err(|e| e.to_string())?;
    index(handle, name)
        .await?
        .ok_or_else(|| format!("{name} vanished"))
}

/// A netlink handle in the calling thread's network namespace (the socket
/// is bound to the namespace it was opened in).
async fn handle() -> NetResult<Handle> {
    let (connection, handle, _) = new_connection().map_err(|e| format!("netlink: {e}"))?;
    tokio::spawn(connection);
    Ok(handle)
}

async fn index(handle: &Handle, name: &str) -> NetResult<Option<u32>> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(format!("looking up {name}: {e}")),
    }
}

/// Deletes the link `name` if it exists.
async fn delete_link(handle: &Handle, name: &str) -> NetResult<()> {
    match index(handle, name).await? {
        Some(index) => handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| format!("deleting {name}: {e}")),
        None => Ok(()),
    }
}
