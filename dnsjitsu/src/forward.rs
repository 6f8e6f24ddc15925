//! Names outside the zone go to an upstream server, when one is configured,
//! through hickory's resolver: random query ids and source ports, answers
//! checked against the question and taken only from the upstream's address,
//! a truncated answer asked again over TCP, answers cached for their TTL.
//! At most `limit` forwards are in flight; a query beyond that is answered
//! SERVFAIL at once, so a flood costs the upstream nothing and the daemon
//! a bounded amount of memory and sockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, Record, RecordType};
use hickory_proto::ProtoErrorKind;
use hickory_resolver::config::{NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use tokio::sync::Semaphore;

/// How long one attempt waits for the upstream.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Forwards in flight when none is configured.
pub const DEFAULT_LIMIT: usize = 256;

pub struct Forwarder {
    resolver: TokioResolver,
    in_flight: Arc<Semaphore>,
}

/// What the upstream said, as the handler passes it on.
pub enum Forwarded {
    Answer {
        code: ResponseCode,
        answers: Vec<Record>,
        authority: Vec<Record>,
    },
    /// Too many forwards in flight: not asked.
    Busy,
    /// No usable answer (timeouts, errors): SERVFAIL.
    Failed,
}

impl Forwarder {
    pub fn new(upstream: SocketAddr, limit: usize) -> Forwarder {
        let servers =
            NameServerConfigGroup::from_ips_clear(&[upstream.ip()], upstream.port(), true);
        let config = ResolverConfig::from_parts(None, Vec::new(), servers);
        let mut options = ResolverOpts::default();
        options.timeout = TIMEOUT;
        options.attempts = 2;
        options.use_hosts_file = ResolveHosts::Never;
        options.preserve_intermediates = true;
        options.recursion_desired = true;
        options.num_concurrent_reqs = 1;
        let mut builder =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
        *builder.options_mut() = options;
        Forwarder {
            resolver: builder.build(),
            in_flight: Arc::new(Semaphore::new(limit.max(1))),
        }
    }

    pub async fn forward(&self, name: Name, qtype: RecordType) -> Forwarded {
        let Ok(_permit) = self.in_flight.clone().try_acquire_owned() else {
            return Forwarded::Busy;
        };
        let mut name = name;
        name.set_fqdn(true);
        match self.resolver.lookup(name, qtype).await {
            Ok(lookup) => Forwarded::Answer {
                code: ResponseCode::NoError,
                answers: lookup.record_iter().cloned().collect(),
                authority: Vec::new(),
            },
            Err(e) => match e.proto().map(|p| p.kind()) {
                Some(ProtoErrorKind::NoRecordsFound {
                    response_code, soa, ..
                }) => Forwarded::Answer {
                    code: *response_code,
                    answers: Vec::new(),
                    authority: soa
                        .as_ref()
                        .map(|soa| soa.as_ref().clone().into_record_of_rdata())
                        .into_iter()
                        .collect(),
                },
                _ => {
                    tracing::debug!(%e, "forwarding failed");
                    Forwarded::Failed
                }
            },
        }
    }
}
