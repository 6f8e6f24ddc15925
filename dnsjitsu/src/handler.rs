//! Serving a query: from the zone (booting a parked service on the way), by
//! forwarding, or refused.

use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Header, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{LowerName, Name, Record, RecordType};
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use jitsu_registry as registry;

use crate::allow::Allow;
use crate::directory::Directory;
use crate::forward::{Forwarded, Forwarder};
use crate::zone::{self, Answer, Zone};

pub struct Handler {
    pub zone: Zone,
    pub directory: Directory,
    pub forward: Option<Forwarder>,
    /// Who may ask at all; others get no answer (not even REFUSED: a
    /// spoofed source must not make this daemon send anything).
    pub allow: Allow,
    /// Hold answers for parked services until they run, at most this long.
    pub wait_ready: Option<Duration>,
}

struct Reply {
    code: ResponseCode,
    answers: Vec<Record>,
    authority: Vec<Record>,
    additionals: Vec<Record>,
    authoritative: bool,
}

impl Reply {
    fn code(code: ResponseCode) -> Reply {
        Reply {
            code,
            answers: Vec::new(),
            authority: Vec::new(),
            additionals: Vec::new(),
            authoritative: false,
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        if !self.allow.admits(request.src().ip()) {
            tracing::debug!(src = %request.src(), "ignored a query from outside the allowed ranges");
            let mut header = Header::response_from_request(request.header());
            header.set_response_code(ResponseCode::Refused);
            return header.into();
        }
        let reply =
            if request.message_type() != MessageType::Query || request.op_code() != OpCode::Query {
                Reply::code(ResponseCode::NotImp)
            } else {
                match request.request_info() {
                    Ok(info) => {
                        self.answer(info.query.name(), info.query.query_type())
                            .await
                    }
                    Err(_) => Reply::code(ResponseCode::FormErr),
                }
            };
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut header = Header::response_from_request(request.header());
        header.set_authoritative(reply.authoritative);
        header.set_response_code(reply.code);
        header.set_recursion_available(self.forward.is_some());
        let response = builder.build(
            header,
            reply.answers.iter(),
            reply.authority.iter(),
            [].iter(),
            reply.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(%e, "could not send a DNS response");
                let mut header = Header::new();
                header.set_response_code(ResponseCode::ServFail);
                header.into()
            }
        }
    }
}

impl Handler {
    async fn answer(&self, name: &LowerName, qtype: RecordType) -> Reply {
        let (answer, parked) = {
            let services = self.directory.services();
            let answer = self.zone.answer(name, qtype, &services);
            let text = name.to_string();
            let parked = zone::service_label(&self.zone, name, &text)
                .filter(|label| services.get(*label).is_some_and(|e| e.state == "parked"))
                .map(str::to_string);
            (answer, parked)
        };
        if let (Some(service), Answer::Records(_)) = (&parked, &answer) {
            self.boot(service).await;
        }
        let authoritative = |code, answers, authority| Reply {
            code,
            answers,
            authority,
            additionals: Vec::new(),
            authoritative: true,
        };
        match answer {
            Answer::Records(records) => authoritative(ResponseCode::NoError, records, Vec::new()),
            Answer::NoData => {
                authoritative(ResponseCode::NoError, Vec::new(), vec![self.zone.soa()])
            }
            Answer::NxDomain => {
                authoritative(ResponseCode::NXDomain, Vec::new(), vec![self.zone.soa()])
            }
            Answer::Elsewhere => match &self.forward {
                None => Reply::code(ResponseCode::Refused),
                Some(forwarder) => match forwarder.forward(Name::from(name.clone()), qtype).await {
                    Forwarded::Answer {
                        code,
                        answers,
                        authority,
                    } => Reply {
                        code,
                        answers,
                        authority,
                        additionals: Vec::new(),
                        authoritative: false,
                    },
                    Forwarded::Busy | Forwarded::Failed => Reply::code(ResponseCode::ServFail),
                },
            },
        }
    }

    /// Asks for a boot (one transaction, so many lookups make one boot) and,
    /// with `--wait-ready`, waits until the service runs.
    async fn boot(&self, service: &str) {
        let Some(client) = self.directory.client() else {
            return;
        };
        let name = service.to_string();
        let request = async move {
            match registry::request_boot(&client, &name).await {
                Ok(true) => tracing::info!(service = %name, "boot requested by a lookup"),
                Ok(false) => {}
                Err(e) => tracing::warn!(service = %name, %e, "boot request failed"),
            }
        };
        let Some(limit) = self.wait_ready else {
            tokio::spawn(request);
            return;
        };
        request.await;
        let mut changes = self.directory.subscribe();
        let running = async {
            loop {
                if self
                    .directory
                    .services()
                    .get(service)
                    .is_none_or(|e| e.state == "running")
                {
                    return;
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(limit, running).await;
    }
}

/// Shared so that both UDP and TCP use one handler.
pub type SharedHandler = Arc<Handler>;
