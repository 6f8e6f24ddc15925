//! An async XenStore client: requests are matched to replies by `req_id`, so
//! any number can be in flight; watch events arrive as a `Stream`; and
//! [`Client::transact`] retries a transaction that lost a conflict.
//!
//! Every request has a deadline ([`REQUEST_DEADLINE`] unless set with
//! [`Client::with_deadline`]): a daemon that accepts and never answers must
//! not hold up whoever asks (a monitor on its way out, a shim cleaning up).

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;

use crate::wire::{self, Frame, Message, MsgType, XsError, HEADER_LEN, PAYLOAD_MAX};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("XenStore error {0}")]
    Xs(#[from] XsError),
    #[error("cannot connect to XenStore at {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("XenStore connection lost")]
    Closed,
    #[error("request of {0} bytes is over the 4096-byte limit")]
    TooBig(usize),
    #[error("malformed reply from XenStore: {0}")]
    BadReply(String),
    #[error("transaction still conflicting after {0} attempts")]
    Contended(u32),
    #[error("XenStore did not answer within {0:?}")]
    Timeout(Duration),
}

/// How long a request (or a connect) may take unless the caller says.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

impl ClientError {
    pub fn is_again(&self) -> bool {
        matches!(self, ClientError::Xs(XsError::Again))
    }
}

/// A change reported by a watch: the path that changed and the watch's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    pub path: String,
    pub token: String,
}

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<Message>>>>;
type Watches = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<WatchEvent>>>>;

struct Inner {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    watches: Watches,
    next_req: AtomicU32,
    next_token: AtomicU64,
    /// A request gave up halfway through writing: the stream is torn.
    torn: AtomicBool,
}

#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    deadline: Duration,
}

impl Client {
    pub async fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        let path = path.as_ref();
        let connect = tokio::time::timeout(REQUEST_DEADLINE, UnixStream::connect(path));
        let stream = connect
            .await
            .map_err(|_| ClientError::Timeout(REQUEST_DEADLINE))?
            .map_err(|source| ClientError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (reader, writer) = stream.into_split();
        let pending: Pending = Arc::default();
        let watches: Watches = Arc::default();
        tokio::spawn(read_replies(reader, pending.clone(), watches.clone()));
        Ok(Client {
            inner: Arc::new(Inner {
                writer: tokio::sync::Mutex::new(writer),
                pending,
                watches,
                next_req: AtomicU32::new(1),
                next_token: AtomicU64::new(1),
                torn: AtomicBool::new(false),
            }),
            deadline: REQUEST_DEADLINE,
        })
    }

    /// This client (a handle on the same connection) with requests bounded
    /// by `deadline` instead.
    pub fn with_deadline(mut self, deadline: Duration) -> Client {
        self.deadline = deadline;
        self
    }

    /// Sends one request and waits for its reply, at most the deadline.
    pub async fn request(
        &self,
        kind: MsgType,
        tx_id: u32,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, ClientError> {
        if payload.len() > PAYLOAD_MAX {
            return Err(ClientError::TooBig(payload.len()));
        }
        let req_id = self.inner.next_req.fetch_add(1, Ordering::Relaxed);
        let exchange = self.exchange(req_id, kind, tx_id, payload);
        match tokio::time::timeout(self.deadline, exchange).await {
            Ok(reply) => reply,
            Err(_) => {
                self.forget(req_id);
                Err(ClientError::Timeout(self.deadline))
            }
        }
    }

    /// No reply to `req_id` is awaited any more.
    fn forget(&self, req_id: u32) {
        self.inner
            .pending
            .lock()
            .expect("pending lock")
            .remove(&req_id);
    }

    async fn exchange(
        &self,
        req_id: u32,
        kind: MsgType,
        tx_id: u32,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .pending
            .lock()
            .expect("pending lock")
            .insert(req_id, tx);
        let bytes = Message::new(kind, req_id, tx_id, payload).encode();
        let sent = {
            let mut writer = self.inner.writer.lock().await;
            // Cancelled (the deadline) between these two stores, the frame
            // may be half written: no later request may follow it.
            if self.inner.torn.load(Ordering::Acquire) {
                drop(writer);
                self.forget(req_id);
                return Err(ClientError::Closed);
            }
            self.inner.torn.store(true, Ordering::Release);
            let sent = writer.write_all(&bytes).await;
            self.inner.torn.store(false, Ordering::Release);
            sent
        };
        if sent.is_err() {
            self.forget(req_id);
            return Err(ClientError::Closed);
        }
        let reply = rx.await.map_err(|_| ClientError::Closed)?;
        if reply.kind == MsgType::Error {
            let name = reply
                .strings()
                .first()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .unwrap_or_default();
            return Err(XsError::from_name(&name).map_or(
                ClientError::BadReply(format!("error {name:?}")),
                ClientError::Xs,
            ));
        }
        Ok(reply.payload)
    }

    pub async fn read(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        read(self, 0, path).await
    }

    pub async fn read_string(&self, path: &str) -> Result<String, ClientError> {
        Ok(String::from_utf8_lossy(&self.read(path).await?).into_owned())
    }

    pub async fn write(&self, path: &str, value: impl AsRef<[u8]>) -> Result<(), ClientError> {
        write(self, 0, path, value.as_ref()).await
    }

    pub async fn mkdir(&self, path: &str) -> Result<(), ClientError> {
        simple(self, MsgType::Mkdir, 0, path).await
    }

    pub async fn rm(&self, path: &str) -> Result<(), ClientError> {
        simple(self, MsgType::Rm, 0, path).await
    }

    pub async fn directory(&self, path: &str) -> Result<Vec<String>, ClientError> {
        directory(self, 0, path).await
    }

    pub async fn get_perms(&self, path: &str) -> Result<Vec<String>, ClientError> {
        strings(self.request(MsgType::GetPerms, 0, nul(path)).await?)
    }

    pub async fn set_perms(&self, path: &str, perms: &[&str]) -> Result<(), ClientError> {
        let payload = wire::join_strings(
            std::iter::once(path.as_bytes()).chain(perms.iter().map(|p| p.as_bytes())),
        );
        self.request(MsgType::SetPerms, 0, payload).await.map(drop)
    }

    pub async fn get_domain_path(&self, domid: u32) -> Result<String, ClientError> {
        let reply = strings(
            self.request(MsgType::GetDomainPath, 0, nul(&domid.to_string()))
                .await?,
        )?;
        reply
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::BadReply("empty domain path".into()))
    }

    /// Watches `path` (or `@introduceDomain` / `@releaseDomain`). The first
    /// event, for the path itself, arrives at once.
    pub async fn watch(&self, path: &str) -> Result<Watch, ClientError> {
        let token = format!(
            "jitsu-{}",
            self.inner.next_token.fetch_add(1, Ordering::Relaxed)
        );
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner
            .watches
            .lock()
            .expect("watch lock")
            .insert(token.clone(), tx);
        let payload = wire::join_strings([path.as_bytes(), token.as_bytes()]);
        if let Err(e) = self.request(MsgType::Watch, 0, payload).await {
            self.inner
                .watches
                .lock()
                .expect("watch lock")
                .remove(&token);
            return Err(e);
        }
        Ok(Watch {
            client: self.clone(),
            path: path.into(),
            token,
            events: rx,
        })
    }

    pub async fn transaction(&self) -> Result<Transaction, ClientError> {
        let reply = strings(self.request(MsgType::TransactionStart, 0, vec![0]).await?)?;
        let id = reply
            .first()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ClientError::BadReply("transaction id".into()))?;
        Ok(Transaction {
            client: self.clone(),
            id,
        })
    }

    /// Runs `body` in a transaction and commits it, starting again (after a
    /// short, growing pause) whenever the commit or an operation says EAGAIN.
    /// `body` gets a handle to the transaction (cheap to clone).
    pub async fn transact<T, F, Fut>(&self, mut body: F) -> Result<T, ClientError>
    where
        F: FnMut(Transaction) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        const ATTEMPTS: u32 = 100;
        for attempt in 0..ATTEMPTS {
            let tx = self.transaction().await?;
            let outcome = match body(tx.clone()).await {
                Ok(value) => tx.commit().await.map(|()| value),
                Err(e) => {
                    let _ = tx.abort().await;
                    Err(e)
                }
            };
            match outcome {
                Err(e) if e.is_again() => {
                    let pause = 50u64 << attempt.min(6);
                    tokio::time::sleep(Duration::from_micros(pause + (self.jitter() % pause)))
                        .await;
                }
                other => return other,
            }
        }
        Err(ClientError::Contended(ATTEMPTS))
    }

    fn jitter(&self) -> u64 {
        // Spreads retries of clients that collided; no need for real randomness.
        let n = self.inner.next_token.fetch_add(1, Ordering::Relaxed);
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40
    }
}

/// A transaction: the same operations, seen in isolation until commit.
#[derive(Clone)]
pub struct Transaction {
    client: Client,
    id: u32,
}

impl Transaction {
    pub fn id(&self) -> u32 {
        self.id
    }

    pub async fn read(&self, path: &str) -> Result<Vec<u8>, ClientError> {
        read(&self.client, self.id, path).await
    }

    pub async fn write(&self, path: &str, value: impl AsRef<[u8]>) -> Result<(), ClientError> {
        write(&self.client, self.id, path, value.as_ref()).await
    }

    pub async fn mkdir(&self, path: &str) -> Result<(), ClientError> {
        simple(&self.client, MsgType::Mkdir, self.id, path).await
    }

    pub async fn rm(&self, path: &str) -> Result<(), ClientError> {
        simple(&self.client, MsgType::Rm, self.id, path).await
    }

    pub async fn directory(&self, path: &str) -> Result<Vec<String>, ClientError> {
        directory(&self.client, self.id, path).await
    }

    pub async fn get_perms(&self, path: &str) -> Result<Vec<String>, ClientError> {
        strings(
            self.client
                .request(MsgType::GetPerms, self.id, nul(path))
                .await?,
        )
    }

    pub async fn set_perms(&self, path: &str, perms: &[&str]) -> Result<(), ClientError> {
        let payload = wire::join_strings(
            std::iter::once(path.as_bytes()).chain(perms.iter().map(|p| p.as_bytes())),
        );
        self.client
            .request(MsgType::SetPerms, self.id, payload)
            .await
            .map(drop)
    }

    /// Commits; EAGAIN (see [`ClientError::is_again`]) if it conflicted.
    pub async fn commit(self) -> Result<(), ClientError> {
        self.client
            .request(MsgType::TransactionEnd, self.id, b"T\0".to_vec())
            .await
            .map(drop)
    }

    pub async fn abort(self) -> Result<(), ClientError> {
        self.client
            .request(MsgType::TransactionEnd, self.id, b"F\0".to_vec())
            .await
            .map(drop)
    }
}

/// Events of one watch.
pub struct Watch {
    client: Client,
    path: String,
    token: String,
    events: mpsc::UnboundedReceiver<WatchEvent>,
}

impl Watch {
    pub fn token(&self) -> &str {
        &self.token
    }

    pub async fn next(&mut self) -> Option<WatchEvent> {
        self.events.recv().await
    }

    pub async fn unwatch(self) -> Result<(), ClientError> {
        let payload = wire::join_strings([self.path.as_bytes(), self.token.as_bytes()]);
        self.client
            .inner
            .watches
            .lock()
            .expect("watch lock")
            .remove(&self.token);
        self.client
            .request(MsgType::Unwatch, 0, payload)
            .await
            .map(drop)
    }
}

impl Stream for Watch {
    type Item = WatchEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchEvent>> {
        self.events.poll_recv(cx)
    }
}

fn nul(s: &str) -> Vec<u8> {
    wire::join_strings([s.as_bytes()])
}

fn strings(payload: Vec<u8>) -> Result<Vec<String>, ClientError> {
    Ok(wire::split_strings(&payload)
        .into_iter()
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

async fn read(client: &Client, tx: u32, path: &str) -> Result<Vec<u8>, ClientError> {
    client.request(MsgType::Read, tx, nul(path)).await
}

async fn write(client: &Client, tx: u32, path: &str, value: &[u8]) -> Result<(), ClientError> {
    let mut payload = nul(path);
    payload.extend_from_slice(value);
    client.request(MsgType::Write, tx, payload).await.map(drop)
}

async fn simple(client: &Client, kind: MsgType, tx: u32, path: &str) -> Result<(), ClientError> {
    client.request(kind, tx, nul(path)).await.map(drop)
}

/// DIRECTORY, falling back to DIRECTORY_PART when the listing does not fit
/// in one reply (E2BIG); parts are read again from the start if the node's
/// generation changes between them.
async fn directory(client: &Client, tx: u32, path: &str) -> Result<Vec<String>, ClientError> {
    match client.request(MsgType::Directory, tx, nul(path)).await {
        Err(ClientError::Xs(XsError::TooBig)) => {}
        other => return strings(other?),
    }
    'again: for _ in 0..16 {
        let (mut names, mut offset, mut gen) = (Vec::new(), 0usize, None);
        loop {
            let payload = wire::join_strings([path.as_bytes(), offset.to_string().as_bytes()]);
            let reply = client.request(MsgType::DirectoryPart, tx, payload).await?;
            let parts = wire::split_strings(&reply);
            let (part_gen, rest) = parts
                .split_first()
                .ok_or_else(|| ClientError::BadReply("empty DIRECTORY_PART".into()))?;
            if gen.is_some_and(|g| g != *part_gen) {
                continue 'again;
            }
            gen = Some(part_gen.to_vec());
            for name in rest.iter().filter(|n| !n.is_empty()) {
                offset += name.len() + 1;
                names.push(String::from_utf8_lossy(name).into_owned());
            }
            if rest.last().is_some_and(|n| n.is_empty()) || rest.is_empty() {
                return Ok(names);
            }
        }
    }
    Err(ClientError::BadReply(format!(
        "{path} kept changing while it was listed"
    )))
}

/// Reads frames; replies go to their waiting request, events to their watch.
async fn read_replies(
    mut reader: tokio::net::unix::OwnedReadHalf,
    pending: Pending,
    watches: Watches,
) {
    let mut buf = Vec::with_capacity(2 * (HEADER_LEN + PAYLOAD_MAX));
    let mut chunk = [0u8; 8192];
    loop {
        loop {
            let (frame, used) = match Frame::decode(&buf) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(%e, "malformed frame from XenStore; closing");
                    pending.lock().expect("pending lock").clear();
                    return;
                }
            };
            buf.drain(..used);
            let Ok(msg) = frame.message() else { continue };
            if msg.kind == MsgType::WatchEvent {
                let parts = msg.strings();
                if let [path, token, ..] = parts.as_slice() {
                    let token = String::from_utf8_lossy(token).into_owned();
                    if let Some(tx) = watches.lock().expect("watch lock").get(&token) {
                        let _ = tx.send(WatchEvent {
                            path: String::from_utf8_lossy(path).into_owned(),
                            token,
                        });
                    }
                }
            } else if let Some(tx) = pending.lock().expect("pending lock").remove(&msg.req_id) {
                let _ = tx.send(msg);
            }
        }
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    // Dropping the senders fails every request still waiting, and ends the watches.
    pending.lock().expect("pending lock").clear();
    watches.lock().expect("watch lock").clear();
}
