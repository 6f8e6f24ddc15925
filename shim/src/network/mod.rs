//! The guest's network: on the node's own bridge (`ctr run`, no CNI) or in
//! a Kubernetes pod's namespace, wired to the pod's `eth0`.

pub mod bridge;
pub mod pod;

use futures_util::TryStreamExt;
use rtnetlink::{new_connection, Handle};

pub type NetResult<T> = Result<T, String>;

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
