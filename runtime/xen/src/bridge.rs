//! The bridge the domains' vifs join (libxl's vif-bridge hotplug script
//! plugs each vif in), over netlink: made if it is missing, with the
//! gateway's address when one is asked for, and brought up. A lazy service
//! also plugs its stand-in TAP in, and pins its MAC to one port or the
//! other: the TAP while Synjitsu stands in, the vif once the guest's link is
//! up. The pin is a static, sticky FDB entry, so the guest's own frames (its
//! gratuitous ARP as netfront connects) cannot move it early.

use std::net::Ipv4Addr;

use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};
use rtnetlink::{Handle, LinkBridge, LinkUnspec};
use thiserror::Error;

#[derive(Debug, Error)]
#[error("bridge {bridge}: {what}: {detail}")]
pub struct BridgeError {
    bridge: String,
    what: &'static str,
    detail: String,
}

/// A bridge, and a netlink connection kept open for the service's life
/// (the hand-over at each boot is on a client's path).
pub struct Bridge {
    name: String,
    index: u32,
    mtu: u32,
    runtime: tokio::runtime::Runtime,
    handle: Handle,
}

impl Bridge {
    /// Makes sure `name` exists and is up. A bridge made here gets
    /// `address`, if given; one that exists is someone else's (the shim
    /// makes a pod's, which switches frames and holds no address) and keeps
    /// the addresses it has.
    pub fn ensure(name: &str, address: Option<(Ipv4Addr, u8)>) -> Result<Bridge, BridgeError> {
        let err = |what, detail: String| BridgeError {
            bridge: name.to_string(),
            what,
            detail,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| err("starting netlink", e.to_string()))?;
        let handle = runtime.block_on(async {
            let (connection, handle, _) =
                rtnetlink::new_connection().map_err(|e| err("opening netlink", e.to_string()))?;
            tokio::spawn(connection);
            Ok::<_, BridgeError>(handle)
        })?;
        let mut bridge = Bridge {
            name: name.to_string(),
            index: 0,
            mtu: 1500,
            runtime,
            handle,
        };
        (bridge.index, bridge.mtu) = bridge.make(address)?;
        Ok(bridge)
    }

    fn err(&self, what: &'static str, detail: impl ToString) -> BridgeError {
        BridgeError {
            bridge: self.name.clone(),
            what,
            detail: detail.to_string(),
        }
    }

    /// The bridge's index and MTU, once it exists and is up.
    fn make(&self, address: Option<(Ipv4Addr, u8)>) -> Result<(u32, u32), BridgeError> {
        let handle = &self.handle;
        self.runtime.block_on(async {
            let made = match link(handle, &self.name).await {
                Some(_) => false,
                None => match handle
                    .link()
                    .add(LinkBridge::new(&self.name).build())
                    .execute()
                    .await
                {
                    Ok(()) => true,
                    // Another monitor made it meanwhile: it adds the address.
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {
                        false
                    }
                    Err(e) => return Err(self.err("creating it", e)),
                },
            };
            let (index, mtu) = link(handle, &self.name)
                .await
                .ok_or_else(|| self.err("creating it", "it vanished"))?;
            if let (true, Some((ip, prefix))) = (made, address) {
                match handle
                    .address()
                    .add(index, ip.into(), prefix)
                    .execute()
                    .await
                {
                    Ok(()) => {}
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
                    Err(e) => return Err(self.err("adding its address", e)),
                }
            }
            handle
                .link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(|e| self.err("bringing it up", e))?;
            Ok((index, mtu))
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The MTU a guest on the bridge is told: the bridge's, if below the
    /// Ethernet default (a pod network's overlay); else none, and the guest
    /// keeps to 1500, which any bridge above it carries.
    pub fn guest_mtu(&self) -> Option<u32> {
        (self.mtu < 1500).then_some(self.mtu)
    }

    /// Plugs interface `port` into the bridge, down (see [`Bridge::set_up`]).
    pub fn plug(&self, port: u32) -> Result<(), BridgeError> {
        let message = LinkUnspec::new_with_index(port)
            .controller(self.index)
            .build();
        self.runtime
            .block_on(self.handle.link().set(message).execute())
            .map_err(|e| self.err("plugging a port in", e))
    }

    /// Brings interface `port` up or down (a port that is down gets nothing
    /// from the bridge).
    pub fn set_up(&self, port: u32, up: bool) -> Result<(), BridgeError> {
        let link = LinkUnspec::new_with_index(port);
        let message = if up { link.up() } else { link.down() }.build();
        self.runtime
            .block_on(self.handle.link().set(message).execute())
            .map_err(|e| self.err("setting a port up or down", e))
    }

    /// Frames for `mac` go to `port` from now on, whatever the source
    /// addresses of frames the bridge sees (one netlink request: the move
    /// is atomic).
    pub fn pin(&self, mac: [u8; 6], port: u32) -> Result<(), BridgeError> {
        let request = self
            .handle
            .neighbours()
            .add_bridge(port, &mac)
            .state(NeighbourState::Noarp)
            .flags(NeighbourFlags::Controller | NeighbourFlags::Sticky)
            .replace();
        self.runtime
            .block_on(request.execute())
            .map_err(|e| self.err("pinning the service's MAC to a port", e))
    }
}

/// The index and MTU of the link `name`, if it exists.
async fn link(handle: &Handle, name: &str) -> Option<(u32, u32)> {
    use futures_util::TryStreamExt;
    use rtnetlink::packet_route::link::LinkAttribute;
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    let link = links.try_next().await.ok().flatten()?;
    let mtu = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    });
    Some((link.header.index, mtu.unwrap_or(1500)))
}
