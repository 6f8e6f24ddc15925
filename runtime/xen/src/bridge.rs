//! The bridge the domains' vifs join (libxl's vif-bridge hotplug script
//! plugs each vif in): made over netlink if it is missing, with the
//! gateway's address when one is asked for, and brought up.

use std::net::Ipv4Addr;

use rtnetlink::{Handle, LinkBridge, LinkUnspec};
use thiserror::Error;

#[derive(Debug, Error)]
#[error("bridge {bridge}: {what}: {detail}")]
pub struct BridgeError {
    bridge: String,
    what: &'static str,
    detail: String,
}

/// Makes sure `name` exists and is up, holding `address` if given.
pub fn ensure(name: &str, address: Option<(Ipv4Addr, u8)>) -> Result<(), BridgeError> {
    let err = |what, detail: String| BridgeError {
        bridge: name.to_string(),
        what,
        detail,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| err("starting netlink", e.to_string()))?;
    runtime.block_on(async {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| err("opening netlink", e.to_string()))?;
        tokio::spawn(connection);
        let index = match index(&handle, name).await {
            Some(index) => index,
            None => {
                match handle
                    .link()
                    .add(LinkBridge::new(name).build())
                    .execute()
                    .await
                {
                    Ok(()) => {}
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
                    Err(e) => return Err(err("creating it", e.to_string())),
                }
                index(&handle, name)
                    .await
                    .ok_or_else(|| err("creating it", "it vanished".into()))?
            }
        };
        if let Some((ip, prefix)) = address {
            match handle
                .address()
                .add(index, ip.into(), prefix)
                .execute()
                .await
            {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
                Err(e) => return Err(err("adding its address", e.to_string())),
            }
        }
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| err("bringing it up", e.to_string()))
    })
}

async fn index(handle: &Handle, name: &str) -> Option<u32> {
    use futures_util::TryStreamExt;
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    links
        .try_next()
        .await
        .ok()
        .flatten()
        .map(|link| link.header.index)
}
