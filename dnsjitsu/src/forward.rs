//! Names outside the zone go to an upstream server, when one is configured.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::net::UdpSocket;

const TIMEOUT: Duration = Duration::from_secs(2);

/// Asks `upstream` for `name`/`qtype` over UDP; `None` on timeout or garbage.
pub async fn forward(upstream: SocketAddr, name: Name, qtype: RecordType) -> Option<Message> {
    let mut query = Message::new();
    let id = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .subsec_nanos()
        & 0xffff) as u16;
    query
        .set_id(id)
        .set_recursion_desired(true)
        .add_query(Query::query(name, qtype));
    let bytes = query.to_vec().ok()?;
    let bind: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .ok()?;
    let socket = UdpSocket::bind(bind).await.ok()?;
    socket.send_to(&bytes, upstream).await.ok()?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let (n, from) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        if from != upstream {
            continue;
        }
        match Message::from_vec(&buf[..n]) {
            Ok(reply) if reply.id() == id => return Some(reply),
            _ => continue,
        }
    }
}
