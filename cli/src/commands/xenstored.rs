//! `jitsu xenstored`: a XenStore daemon on a unix socket.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use jitsu_xenstore::server::{self, Server};

use jitsu_xenstore::Limits;

#[derive(Args)]
pub struct XenstoredArgs {
    /// Socket to serve [default: $XENSTORED_PATH, else /var/run/xenstored/socket].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Turn off the merge rule: any change to a node a transaction touched
    /// makes its commit fail with EAGAIN, as in xenstored.
    #[arg(long)]
    strict: bool,
    /// Nodes one domain may own.
    #[arg(long, default_value_t = Limits::default().nodes_per_domain)]
    quota_nodes: usize,
    /// Watches per connection.
    #[arg(long, default_value_t = Limits::default().watches_per_conn)]
    quota_watches: usize,
    /// Open transactions per connection.
    #[arg(long, default_value_t = Limits::default().transactions_per_conn)]
    quota_transactions: usize,
}

/// Jitsu's XenStore on `path`: open to every local user, each client acting
/// as the domain of its uid (root as dom0, a jailed monitor as its own
/// domain, anyone else turned away; see `jitsu_registry::identity`), with
/// the registry's root made. Serves until the task is dropped.
pub async fn start_store(
    path: &Path,
    limits: Limits,
    strict: bool,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = server::bind(path).with_context(|| format!("{}", path.display()))?;
    server::open_to_all(path).with_context(|| format!("{}", path.display()))?;
    warn_if_closed_folder(path);
    let server = Server::new(limits, strict).with_identity(jitsu_registry::identity::domid_of_uid);
    let serving = tokio::spawn(server.serve(listener));
    let client = jitsu_xenstore::Client::connect(path)
        .await
        .with_context(|| format!("{}", path.display()))?;
    jitsu_registry::prepare_root(&client)
        .await
        .context("making the registry's root")?;
    jitsu_conduit::rendezvous::prepare_root(&client)
        .await
        .context("making Conduit's root")?;
    Ok(serving)
}

/// Jailed monitors see the socket's folder (and only it), as their own
/// uid: a folder others may not enter keeps them out of the registry.
fn warn_if_closed_folder(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Some(folder) = path.parent() else { return };
    let mode = std::fs::metadata(folder).map_or(0, |m| m.permissions().mode());
    if mode & 0o001 == 0 {
        eprintln!(
            "jitsu: warning: {} is closed to other users ({:o}): monitors, which run as their own users, \
             cannot reach the registry; put the socket in a folder of its own (as /var/run/xenstored)",
            folder.display(),
            mode & 0o777
        );
    }
}

pub fn run(args: XenstoredArgs) -> Result<u8> {
    let socket = args.socket.unwrap_or_else(server::default_socket_path);
    let limits = Limits {
        nodes_per_domain: args.quota_nodes,
        watches_per_conn: args.quota_watches,
        transactions_per_conn: args.quota_transactions,
        ..Limits::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async {
        let serve = start_store(&socket, limits, args.strict).await?;
        tracing::info!(socket = %socket.display(), strict = args.strict, "serving XenStore");
        eprintln!(
            "jitsu xenstored: serving {}{}",
            socket.display(),
            if args.strict { " (strict)" } else { "" }
        );
        let serve = async {
            serve
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            served = serve => served.context("serving")?,
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = std::fs::remove_file(&socket);
        Ok(0)
    })
}
