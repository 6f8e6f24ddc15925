//! dnsjitsu: the DNS directory of a Jitsu node. It is authoritative for one
//! zone (`jitsu.internal.` by default) whose names are the services in the
//! XenStore registry, follows the registry live, and asks for a parked
//! service's boot as it answers for it, so that the unikernel is coming up
//! by the time the client connects. Names outside the zone are forwarded to
//! an upstream server, or refused; sources outside the allowed ranges (the
//! node's own, by default) get no answer at all.

pub mod allow;
pub mod directory;
pub mod forward;
pub mod handler;
pub mod metrics;
pub mod zone;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use hickory_proto::rr::Name;
use hickory_server::ServerFuture;
use thiserror::Error;
use tokio::net::{TcpListener, UdpSocket};

#[derive(Debug, Error)]
pub enum DnsError {
    #[error("zone {zone:?} is not a valid domain name: {source}")]
    Zone {
        zone: String,
        source: hickory_proto::ProtoError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("DNS server stopped: {0}")]
    Serve(hickory_proto::ProtoError),
}

#[derive(Debug, Clone)]
pub struct DnsConfig {
    pub listen: SocketAddr,
    pub zone: String,
    pub ttl: Duration,
    pub forward: Option<SocketAddr>,
    /// Forwards in flight at most (beyond: SERVFAIL at once).
    pub forward_limit: usize,
    /// Sources answered; `None`: the node's own ranges.
    pub allow: Option<Vec<allow::Cidr>>,
    pub wait_ready: Option<Duration>,
    /// The XenStore daemon holding the registry.
    pub xenstore: PathBuf,
    /// Serve Prometheus metrics here (`GET /metrics`).
    pub metrics: Option<SocketAddr>,
}

/// Serves DNS on UDP and TCP until the future is dropped.
pub async fn serve(config: DnsConfig) -> Result<(), DnsError> {
    let origin = Name::from_ascii(&config.zone).map(|n| {
        let mut n = n.to_lowercase();
        n.set_fqdn(true);
        n
    });
    let origin = origin.map_err(|source| DnsError::Zone {
        zone: config.zone.clone(),
        source,
    })?;
    let ns_addr = match config.listen.ip() {
        IpAddr::V4(ip) if !ip.is_unspecified() => ip,
        _ => Ipv4Addr::LOCALHOST,
    };
    let ttl = config.ttl.as_secs().clamp(0, u32::MAX as u64) as u32;
    let zone = zone::Zone::new(origin, ttl, ns_addr).map_err(|source| DnsError::Zone {
        zone: config.zone.clone(),
        source,
    })?;
    let directory = directory::Directory::follow(config.xenstore.clone());
    if let Some(addr) = config.metrics {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| DnsError::Listen { addr, source })?;
        tracing::info!(%addr, "serving metrics");
        tokio::spawn(metrics::serve(listener, directory.clone()));
    }
    let handler = handler::Handler {
        zone,
        directory,
        forward: config
            .forward
            .map(|upstream| forward::Forwarder::new(upstream, config.forward_limit)),
        allow: match &config.allow {
            Some(ranges) => allow::Allow::only(ranges.clone()),
            None => allow::Allow::node_ranges(),
        },
        wait_ready: config.wait_ready,
    };
    let listen = |source| DnsError::Listen {
        addr: config.listen,
        source,
    };
    let udp = UdpSocket::bind(config.listen).await.map_err(listen)?;
    let tcp = TcpListener::bind(config.listen).await.map_err(listen)?;
    tracing::info!(zone = %config.zone, listen = %config.listen, "serving DNS");
    let mut server = ServerFuture::new(handler);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5));
    server.block_until_done().await.map_err(DnsError::Serve)
}
