//! Networking inside a Kubernetes pod: CNI has made the pod's namespace and
//! given it `eth0` with the pod's address. The unikernel takes that address
//! over: a TAP beside `eth0`, and tc ingress filters that redirect every
//! frame from one to the other (mirred), so the guest is the pod on the wire
//! and the kernel's own stack in the namespace sees nothing.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::packet_route::tc::TcHandle;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use serde::{Deserialize, Serialize};

use super::{create_tap, delete_link, handle, index, NetResult};
use crate::state::ContainerKey;

/// The interface CNI gives every pod (containerd's CRI names it so).
pub const POD_IFACE: &str = "eth0";
/// `tc ... parent ffff:`, the ingress qdisc.
const INGRESS_PARENT: u32 = 0xffff_0000;
/// ETH_P_ALL (every protocol), in the network byte order the kernel wants;
/// rtnetlink passes the value through as it is.
const ALL_PROTOCOLS: u16 = 0x0003u16.to_be();

/// What the guest takes over from the pod's `eth0`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodLink {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub mtu: u32,
}

impl PodLink {
    pub fn mac_string(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// The TAP of a pod's unikernel, in the pod's own namespace: `jt` and
/// the start of the container's digest.
pub fn tap_name(key: &ContainerKey) -> String {
    format!("jt{}", &key.digest()[..12])
}

/// Creates the TAP `tap` in the pod namespace at `netns` and joins it to
/// `eth0` both ways. One unikernel per pod: eth0's ingress qdisc is the
/// claim, so a second one is refused before it touches anything.
pub async fn wire(netns: &Path, tap: &str) -> NetResult<PodLink> {
    wire_port(netns, tap, Port::NewTap).await
}

/// The interface that takes `eth0`'s frames.
#[derive(Clone, Copy)]
pub(super) enum Port {
    /// A TAP, made here (a KVM guest's).
    NewTap,
    /// One that is in the namespace already (a veth end moved there).
    Existing,
}

/// Joins `port` to `eth0` both ways, as [`wire`] does; `eth0`'s link, for
/// the guest to take over.
pub(super) async fn wire_port(netns: &Path, port: &str, kind: Port) -> NetResult<PodLink> {
    let port = port.to_string();
    in_netns(netns, move || async move {
        let handle = handle().await?;
        let link = pod_link(&handle).await?;
        let eth0 = index(&handle, POD_IFACE).await?.ok_or("no eth0")?;
        add_ingress(&handle, eth0, POD_IFACE).await?;
        let joined = match kind {
            Port::NewTap => redirect_between(&handle, eth0, &port, link.mtu).await,
            Port::Existing => match index(&handle, &port).await {
                Ok(Some(at)) => redirect(&handle, eth0, at, &port, link.mtu).await,
                Ok(None) => Err(format!("{port} is not in the pod's namespace")),
                Err(e) => Err(e),
            },
        };
        if let Err(e) = joined {
            // Undo only what this call made: the qdisc on eth0 is ours.
            let _ = delete_ingress(&handle, eth0).await;
            return Err(e);
        }
        Ok(link)
    })
    .await
}

/// Undoes `wire`. Nothing to do when the namespace is already gone: the
/// TAP and the filters went with it.
pub async fn unwire(netns: &Path, tap: &str) -> NetResult<()> {
    if !netns.exists() {
        return Ok(());
    }
    let tap = tap.to_string();
    in_netns(netns, move || async move {
        let handle = handle().await?;
        delete_link(&handle, &tap).await?;
        if let Some(eth0) = index(&handle, POD_IFACE).await? {
            delete_ingress(&handle, eth0).await?;
        }
        Ok(())
    })
    .await
}

/// Runs `work` on a thread of its own inside the namespace at `netns`. A
/// thread of its own because `setns` moves only the calling thread, and the
/// shim's runtime threads must stay where they are.
async fn in_netns<T, F, Fut>(netns: &Path, work: F) -> NetResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = NetResult<T>>,
{
    let ns = std::fs::File::open(netns)
        .map_err(|e| format!("pod network namespace {}: {e}", netns.display()))?;
    let shown = netns.display().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("pod-netns".into())
        .spawn(move || {
            let result = nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("entering {shown}: {e}"))
                .and_then(|()| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| format!("runtime: {e}"))
                })
                .and_then(|runtime| runtime.block_on(work()));
            let _ = tx.send(result);
        })
        .map_err(|e| format!("starting a thread: {e}"))?;
    rx.await
        .map_err(|_| "the pod network thread died".to_string())?
}

/// `eth0`'s MAC, MTU, IPv4 address and the default gateway.
async fn pod_link(handle: &Handle) -> NetResult<PodLink> {
    let link: LinkMessage = handle
        .link()
        .get()
        .match_name(POD_IFACE.to_string())
        .execute()
        .try_next()
        .await
        .map_err(|e| format!("the pod has no {POD_IFACE} (is CNI set up?): {e}"))?
        .ok_or_else(|| format!("the pod has no {POD_IFACE}"))?;
    let mut mac = None;
    let mut mtu = 1500;
    for attr in &link.attributes {
        match attr {
            LinkAttribute::Address(a) => mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
            LinkAttribute::Mtu(m) => mtu = *m,
            _ => {}
        }
    }
    let mac = mac.ok_or_else(|| format!("{POD_IFACE} has no Ethernet address"))?;
    let (ip, prefix) = ipv4_of(handle, link.header.index).await?;
    Ok(PodLink {
        mac,
        ip,
        prefix,
        gateway: default_gateway(handle).await?,
        mtu,
    })
}

async fn ipv4_of(handle: &Handle, index: u32) -> NetResult<(Ipv4Addr, u8)> {
    let addresses: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(|e| format!("reading {POD_IFACE}'s addresses: {e}"))?;
    addresses
        .iter()
        .filter(|a| a.header.family == AddressFamily::Inet)
        .find_map(|a| {
            a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some((*ip, a.header.prefix_len)),
                _ => None,
            })
        })
        .ok_or_else(|| {
            format!("{POD_IFACE} has no IPv4 address (IPv6-only pods are not supported)")
        })
}

async fn default_gateway(handle: &Handle) -> NetResult<Option<Ipv4Addr>> {
    let routes: Vec<_> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(|e| format!("reading the pod's routes: {e}"))?;
    Ok(routes
        .iter()
        .filter(|r| r.header.destination_prefix_length == 0)
        .find_map(|r| {
            r.attributes.iter().find_map(|attr| match attr {
                RouteAttribute::Gateway(RouteAddress::Inet(gw)) => Some(*gw),
                _ => None,
            })
        }))
}

/// A new TAP, up with `eth0`'s MTU, and one ingress redirect each way
/// (eth0's ingress qdisc is already there). The TAP goes again if the
/// redirects cannot be set up.
async fn redirect_between(handle: &Handle, eth0: u32, tap: &str, mtu: u32) -> NetResult<()> {
    let tap_index = create_tap(handle, tap).await?;
    let redirected = redirect(handle, eth0, tap_index, tap, mtu).await;
    if redirected.is_err() {
        let _ = delete_link(handle, tap).await;
    }
    redirected
}

async fn redirect(
    handle: &Handle,
    eth0: u32,
    tap_index: u32,
    tap: &str,
    mtu: u32,
) -> NetResult<()> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(tap_index).mtu(mtu).up().build())
        .execute()
        .await
        .map_err(|e| format!("bringing {tap} up: {e}"))?;
    add_ingress(handle, tap_index, tap).await?;
    for (from, to, name) in [(eth0, tap_index, POD_IFACE), (tap_index, eth0, tap)] {
        handle
            .traffic_filter(from as i32)
            .add()
            .parent(INGRESS_PARENT)
            .protocol(ALL_PROTOCOLS)
            .redirect(to)
            .map_err(|e| format!("building the redirect: {e}"))?
            .execute()
            .await
            .map_err(|e| format!("redirecting {name}'s frames: {e}"))?;
    }
    Ok(())
}

async fn add_ingress(handle: &Handle, index: u32, name: &str) -> NetResult<()> {
    handle
        .qdisc()
        .add(index as i32)
        .ingress()
        .execute()
        .await
        .map_err(|e| match e {
            rtnetlink::Error::NetlinkError(ref n) if n.raw_code() == -libc::EEXIST => format!(
                "{name} already has an ingress qdisc: another unikernel of this pod has its network \
                 (a pod's network goes to one unikernel), or the CNI plugin uses tc itself"
            ),
            e => format!("adding an ingress qdisc to {name}: {e}"),
        })
}

async fn delete_ingress(handle: &Handle, index: u32) -> NetResult<()> {
    let mut request = handle.qdisc().del(index as i32);
    let header = &mut request.message_mut().header;
    header.parent = TcHandle::INGRESS;
    header.handle = INGRESS_PARENT.into();
    match request.execute().await {
        Ok(()) => Ok(()),
        // Already gone, or never added.
        Err(rtnetlink::Error::NetlinkError(e))
            if [-libc::ENOENT, -libc::EINVAL].contains(&e.raw_code()) =>
        {
            Ok(())
        }
        Err(e) => Err(format!("removing {POD_IFACE}'s ingress qdisc: {e}")),
    }
}
