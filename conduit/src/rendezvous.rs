//! The `/conduit` tree in XenStore, as the monitors write it (the paths
//! themselves, written and parsed strictly, are `jitsu_vchan::rendezvous`'s,
//! shared with the guests that do this themselves on Xen):
//!
//! ```text
//! /conduit                                  dom0's; domains may create entries
//! /conduit/<name> = "<domid>"               a listener; anyone may read it and
//!                                           file requests below it
//! /conduit/<server>/<client>/<port> = "<client domid>"   a request
//! /local/domain/<srv>/data/vchan/<cli>/<port>/…          the channel's
//!                                           metadata, readable by the client
//! ```

use jitsu_vchan::rendezvous::{write_listener, Request, ROOT};
use jitsu_xenstore::{Client, ClientError, Transaction, XsError};

/// Removes `path` if it is there: Xen's own xenstored says ENOENT for a
/// missing node, where ours says nothing.
async fn rm_if_there(tx: &Transaction, path: &str) -> Result<(), ClientError> {
    match tx.rm(path).await {
        Err(ClientError::Xs(XsError::NoEnt)) => Ok(()),
        other => other,
    }
}

/// Makes `/conduit`, where any domain may register a listener; for the
/// XenStore daemon that holds the registry (`jitsu daemon`, `jitsu xenstored`).
pub async fn prepare_root(client: &Client) -> Result<(), ClientError> {
    client.mkdir(ROOT).await?;
    client.set_perms(ROOT, &["w0"]).await
}

pub fn listener_path(name: &str) -> String {
    let mut path = String::new();
    write_listener(&mut path, name).expect("a checked name");
    path
}

pub fn request_path(request: &Request) -> String {
    let mut path = String::new();
    request
        .write_path(&mut path)
        .expect("a String takes any path");
    path
}

pub fn metadata_dir(request: &Request, server: u32, client: u32) -> String {
    let mut path = String::new();
    request
        .write_metadata_dir(&mut path, server, client)
        .expect("a String takes any path");
    path
}

/// Registers `name` for domain `domid`: its node holds the domid, and any
/// domain may read it and file requests below it. A node left by an
/// earlier holder of the name (a monitor that was killed) is replaced, with
/// whatever requests it held: whoever registers has just bound the name's
/// socket, which no live monitor holds.
pub async fn register(client: &Client, name: &str, domid: u32) -> Result<(), ClientError> {
    let path = listener_path(name);
    client
        .transact(|tx| {
            let path = path.clone();
            async move {
                rm_if_there(&tx, &path).await?;
                tx.write(&path, domid.to_string()).await?;
                tx.set_perms(&path, &[&format!("b{domid}")]).await
            }
        })
        .await
}

/// Removes `name`'s registration (and its pending requests), if it is
/// still `domid`'s.
pub async fn unregister(client: &Client, name: &str, domid: u32) -> Result<(), ClientError> {
    let path = listener_path(name);
    match client.read(&path).await {
        Ok(value) if value == domid.to_string().as_bytes() => match client.rm(&path).await {
            Err(ClientError::Xs(XsError::NoEnt)) => Ok(()),
            other => other,
        },
        Ok(_) | Err(ClientError::Xs(XsError::NoEnt)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Files `request` for the client's domain.
pub async fn file(client: &Client, request: &Request<'_>, domid: u32) -> Result<(), ClientError> {
    client
        .write(&request_path(request), domid.to_string())
        .await
}

/// The domain that filed `request`, if it is there.
pub async fn filed_by(client: &Client, request: &Request<'_>) -> Result<Option<u32>, ClientError> {
    match client.read(&request_path(request)).await {
        Ok(value) => Ok(std::str::from_utf8(&value)
            .ok()
            .and_then(|v| v.parse().ok())),
        Err(ClientError::Xs(XsError::NoEnt)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Withdraws `request`, and the client's folder under the server if it
/// holds no other request.
pub async fn withdraw(client: &Client, request: &Request<'_>) -> Result<(), ClientError> {
    let path = request_path(request);
    let folder = format!("{ROOT}/{}/{}", request.server, request.client);
    client
        .transact(|tx| {
            let (path, folder) = (path.clone(), folder.clone());
            async move {
                rm_if_there(&tx, &path).await?;
                match tx.directory(&folder).await {
                    Ok(ports) if ports.is_empty() => rm_if_there(&tx, &folder).await,
                    Ok(_) | Err(ClientError::Xs(XsError::NoEnt)) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        })
        .await
}

/// Writes the channel's metadata for the client to read (and nobody else):
/// `fields` below the server's `data/vchan/<client>/<port>`.
pub async fn publish_metadata(
    client: &Client,
    request: &Request<'_>,
    server: u32,
    peer: u32,
    fields: &[(&str, String)],
) -> Result<(), ClientError> {
    let dir = metadata_dir(request, server, peer);
    let perms = [format!("n{server}"), format!("r{peer}")];
    client
        .transact(|tx| {
            let (dir, perms) = (dir.clone(), perms.clone());
            async move {
                tx.mkdir(&dir).await?;
                // Set before the fields are made: they inherit it.
                let perms: Vec<&str> = perms.iter().map(String::as_str).collect();
                tx.set_perms(&dir, &perms).await?;
                for (key, value) in fields {
                    tx.write(&format!("{dir}/{key}"), value).await?;
                }
                Ok(())
            }
        })
        .await
}

pub async fn remove_metadata(
    client: &Client,
    request: &Request<'_>,
    server: u32,
    peer: u32,
) -> Result<(), ClientError> {
    match client.rm(&metadata_dir(request, server, peer)).await {
        Err(ClientError::Xs(XsError::NoEnt)) => Ok(()),
        other => other,
    }
}

/// A request for `name`, from a watch event on its node (anything else, the
/// node itself included, is None).
pub fn request_for<'a>(name: &str, path: &'a str) -> Option<Request<'a>> {
    Request::parse(path).ok().filter(|r| r.server == name)
}
