//! `jitsu daemon`: the node's services in one process: XenStore (embedded,
//! unless --xenstore-socket names a running daemon) and the DNS directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use jitsu_xenstore::server;
use jitsu_xenstore::Limits;

use crate::args;

#[derive(Args)]
pub struct DaemonArgs {
    /// Use this running XenStore daemon instead of embedding one.
    #[arg(long, value_name = "PATH")]
    xenstore_socket: Option<PathBuf>,
    /// Where the embedded XenStore listens [default: $XENSTORED_PATH, else /var/run/xenstored/socket].
    #[arg(long, value_name = "PATH", conflicts_with = "xenstore_socket")]
    xenstore_listen: Option<PathBuf>,
    /// DNS address and port (UDP and TCP).
    #[arg(long, default_value = "127.0.0.1:53")]
    dns_listen: SocketAddr,
    /// The zone served.
    #[arg(long, default_value = "jitsu.internal.")]
    zone: String,
    /// TTL of the answers.
    #[arg(long, default_value = "5s", value_parser = args::parse_duration)]
    ttl: Duration,
    /// Forward names outside the zone to this server (otherwise: REFUSED).
    #[arg(long, value_name = "ADDR:PORT")]
    forward: Option<SocketAddr>,
    /// With --forward: forwards in flight at most; queries beyond get SERVFAIL at once.
    #[arg(long, default_value_t = dnsjitsu::forward::DEFAULT_LIMIT, requires = "forward")]
    forward_limit: usize,
    /// Answer only sources in this range (repeatable) [default: the networks
    /// of the node's own interfaces].
    #[arg(long, value_name = "CIDR")]
    allow: Vec<dnsjitsu::allow::Cidr>,
    /// Serve Prometheus metrics of the node's services on this address
    /// (`GET /metrics`).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<SocketAddr>,
    /// Answer for a parked service only once it runs (at most this long).
    #[arg(long, value_name = "TIMEOUT", value_parser = args::parse_duration, num_args = 0..=1, default_missing_value = "2s")]
    wait_ready: Option<Duration>,
}

pub fn run(args: DaemonArgs) -> Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async {
        let (socket, embedded) = match args.xenstore_socket {
            Some(path) => (path, None),
            None => {
                let path = args
                    .xenstore_listen
                    .unwrap_or_else(server::default_socket_path);
                let store = super::xenstored::start_store(&path, Limits::default(), false)
                    .await
                    .with_context(|| format!("XenStore socket {}", path.display()))?;
                eprintln!("jitsu daemon: XenStore on {}", path.display());
                (path, Some(store))
            }
        };
        eprintln!(
            "jitsu daemon: DNS for {} on {} (udp, tcp)",
            args.zone, args.dns_listen
        );
        let config = dnsjitsu::DnsConfig {
            listen: args.dns_listen,
            zone: args.zone,
            ttl: args.ttl,
            forward: args.forward,
            forward_limit: args.forward_limit,
            allow: (!args.allow.is_empty()).then(|| args.allow.clone()),
            wait_ready: args.wait_ready,
            xenstore: socket.clone(),
            metrics: args.metrics,
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let result = tokio::select! {
            served = dnsjitsu::serve(config) => served.context("DNS"),
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = term.recv() => Ok(()),
        };
        if embedded.is_some() {
            let _ = std::fs::remove_file(&socket);
        }
        result.map(|()| 0)
    })
}
