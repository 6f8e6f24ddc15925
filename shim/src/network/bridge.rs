//! Networking for containers started without CNI (`ctr run`): a bridge
//! `jitsu0` holding the node range's first address, one persistent TAP per
//! container enslaved to it, and addresses handed out from a directory of
//! files (`create_new` is the lock: two shims cannot take the same one).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use rtnetlink::{Handle, LinkBridge, LinkUnspec};

use super::{create_tap, delete_link, handle, index, NetResult};

pub const BRIDGE: &str = "jitsu0";
/// The node range: the bridge takes the first address, guests the rest.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const PREFIX: u8 = 16;

/// Creates `jitsu0` with the gateway address if it is missing, and sets it up.
async fn ensure_bridge(handle: &Handle) -> NetResult<u32> {
    if index(handle, BRIDGE).await?.is_none() {
        match handle
            .link()
            .add(LinkBridge::new(BRIDGE).build())
            .execute()
            .await
        {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
            Err(e) => return Err(format!("creating {BRIDGE}: {e}")),
        }
    }
    let bridge = index(handle, BRIDGE)
        .await?
        .ok_or_else(|| format!("{BRIDGE} vanished"))?;
    match handle
        .address()
        .add(bridge, GATEWAY.into(), PREFIX)
        .execute()
        .await
    {
        Ok(()) => {}
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
        Err(e) => return Err(format!("addressing {BRIDGE}: {e}")),
    }
    handle
        .link()
        .set(LinkUnspec::new_with_index(bridge).up().build())
        .execute()
        .await
        .map_err(|e| format!("bringing {BRIDGE} up: {e}"))?;
    Ok(bridge)
}

/// The TAP of the guest at `ip`: `jt` and the address in hex.
pub fn tap_name(ip: Ipv4Addr) -> String {
    format!("jt{:08x}", u32::from(ip))
}

/// A new TAP named `tap` on the bridge, up, ready for the monitor to open;
/// removed again if it cannot be made ready.
pub async fn plug_tap(tap: &str) -> NetResult<()> {
    let handle = handle().await?;
    let bridge = ensure_bridge(&handle).await?;
    let index = create_tap(&handle, tap).await?;
    let plugged = handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .controller(bridge)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(|e| format!("plugging {tap} into {BRIDGE}: {e}"));
    if plugged.is_err() {
        let _ = delete_link(&handle, tap).await;
    }
    plugged
}

/// Removes the TAP (the bridge stays for the next container).
pub async fn unplug_tap(tap: &str) -> NetResult<()> {
    delete_link(&handle().await?, tap).await
}

/// Address allocation: one file per address in use.
pub struct Ipam {
    dir: PathBuf,
}

impl Ipam {
    pub fn new(state_dir: &Path) -> Ipam {
        Ipam {
            dir: state_dir.join("ipam"),
        }
    }

    pub fn allocate(&self, owner: &str) -> NetResult<Ipv4Addr> {
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let base = u32::from(GATEWAY);
        for n in 1..(1u32 << (32 - PREFIX)) - 2 {
            let ip = Ipv4Addr::from(base + n);
            let file = self.dir.join(ip.to_string());
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&file)
            {
                Ok(_) => {
                    std::fs::write(&file, owner).map_err(|e| format!("{}: {e}", file.display()))?;
                    return Ok(ip);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(format!("{}: {e}", file.display())),
            }
        }
        Err("the node range is full".into())
    }

    pub fn release(&self, ip: Ipv4Addr) {
        let _ = std::fs::remove_file(self.dir.join(ip.to_string()));
    }
}
