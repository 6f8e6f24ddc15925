//! The daemon on a unix socket, as xenstored serves its socket clients.
//!
//! One task reads each connection; requests are handled under one lock,
//! which also orders every reply and watch event into the clients' outboxes,
//! so that a client sees events in the order the changes happened. A writer
//! task per connection drains its outbox. A client that stops reading is
//! disconnected when its outbox is full, rather than growing without bound.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::daemon::{ConnId, Daemon};
use crate::limits::Limits;
use crate::wire::{Frame, Header, Message, MsgType, XsError, HEADER_LEN, PAYLOAD_MAX};

/// Oversized messages up to this length are skipped and answered with
/// E2BIG; a longer one is taken as garbage and ends the connection.
const SKIP_MAX: u32 = 1 << 20;

/// The default socket, unless `XENSTORED_PATH` names another.
pub fn default_socket_path() -> PathBuf {
    std::env::var_os("XENSTORED_PATH")
        .map_or_else(|| PathBuf::from("/var/run/xenstored/socket"), PathBuf::from)
}

struct Shared {
    daemon: Daemon,
    outboxes: HashMap<ConnId, mpsc::Sender<Vec<u8>>>,
}

/// Which domain a socket client acts as, by the uid of its process
/// (`None`: the client is turned away).
pub type Identity = fn(uid: u32) -> Option<u32>;

#[derive(Clone)]
pub struct Server {
    shared: Arc<Mutex<Shared>>,
    limits: Limits,
    identity: Option<Identity>,
}

impl Server {
    pub fn new(limits: Limits, strict: bool) -> Server {
        let shared = Shared {
            daemon: Daemon::new(limits, strict),
            outboxes: HashMap::new(),
        };
        Server {
            shared: Arc::new(Mutex::new(shared)),
            limits,
            identity: None,
        }
    }

    /// Clients act as the domain `identity` gives their uid, instead of all
    /// as dom0; the socket may then be open to every local user (see
    /// [`open_to_all`]): who they are decides what they may do.
    pub fn with_identity(mut self, identity: Identity) -> Server {
        self.identity = Some(identity);
        self
    }

    /// The domain of a new client, or `None` to turn it away.
    fn domain_of(&self, stream: &UnixStream) -> Option<u32> {
        let Some(identity) = self.identity else {
            return Some(0);
        };
        let uid = stream.peer_cred().ok()?.uid();
        identity(uid)
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock is a bug; the daemon state is still
        // consistent (handlers work on copies), so keep serving.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the daemon (for inspection in tests and stats).
    pub fn with_daemon<R>(&self, f: impl FnOnce(&Daemon) -> R) -> R {
        f(&self.lock().daemon)
    }

    /// Binds `path` (replacing a stale socket) and serves until the task is dropped.
    pub async fn bind_and_serve(self, path: &Path) -> std::io::Result<()> {
        let listener = bind(path)?;
        self.serve(listener).await
    }

    pub async fn serve(self, listener: UnixListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let server = self.clone();
            tokio::spawn(async move { server.serve_conn(stream).await });
        }
    }

    async fn serve_conn(self, stream: UnixStream) {
        let Some(domid) = self.domain_of(&stream) else {
            tracing::debug!("turned away a client of no known identity");
            return;
        };
        let (mut reader, mut writer) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(self.limits.outbox_per_conn);
        let id = {
            let mut shared = self.lock();
            let id = shared.daemon.connect_as(domid);
            shared.outboxes.insert(id, tx);
            id
        };
        let writer_task = tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if writer.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        });
        if let Err(e) = self.read_loop(id, &mut reader).await {
            tracing::debug!(conn = id, %e, "connection ended");
        }
        {
            let mut shared = self.lock();
            shared.daemon.disconnect(id);
            shared.outboxes.remove(&id);
        }
        // Flush what is queued, but never wait long on a client that does
        // not read.
        let abort = writer_task.abort_handle();
        if tokio::time::timeout(std::time::Duration::from_secs(1), writer_task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }

    async fn read_loop(
        &self,
        id: ConnId,
        reader: &mut tokio::net::unix::OwnedReadHalf,
    ) -> std::io::Result<()> {
        let mut head = [0u8; HEADER_LEN];
        loop {
            if let Err(e) = reader.read_exact(&mut head).await {
                return if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    Ok(())
                } else {
                    Err(e)
                };
            }
            let header = Header::parse(&head);
            if header.len as usize > PAYLOAD_MAX {
                if header.len > SKIP_MAX {
                    return Err(std::io::Error::other(format!(
                        "{}-byte message: not XenStore",
                        header.len
                    )));
                }
                skip(reader, header.len as u64).await?;
                let reply = Message::new(
                    MsgType::Error,
                    header.req_id,
                    header.tx_id,
                    format!("{}\0", XsError::TooBig).into_bytes(),
                );
                deliver(&mut self.lock(), vec![(id, reply)]);
                continue;
            }
            let mut payload = vec![0u8; header.len as usize];
            reader.read_exact(&mut payload).await?;
            // Handling and queueing under one lock: events reach every
            // client in the order the changes were made.
            let mut shared = self.lock();
            let out = shared.daemon.handle(id, Frame { header, payload });
            deliver(&mut shared, out);
            if !shared.outboxes.contains_key(&id) {
                return Err(std::io::Error::other("cut off: outbox full"));
            }
        }
    }
}

/// Queues messages in order; a connection whose outbox is full is cut off.
fn deliver(shared: &mut Shared, messages: Vec<(ConnId, Message)>) {
    let mut full = Vec::new();
    for (to, msg) in messages {
        if let Some(outbox) = shared.outboxes.get(&to) {
            if outbox.try_send(msg.encode()).is_err() {
                full.push(to);
            }
        }
    }
    for id in full {
        tracing::warn!(
            conn = id,
            "client is not reading its replies; disconnecting it"
        );
        shared.outboxes.remove(&id);
        shared.daemon.disconnect(id);
    }
}

async fn skip(reader: &mut tokio::net::unix::OwnedReadHalf, mut len: u64) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    while len > 0 {
        let n = reader.read(&mut buf[..len.min(4096) as usize]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        len -= n as u64;
    }
    Ok(())
}

/// Lets every local user connect (for a server [`Server::with_identity`]).
pub fn open_to_all(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
}

/// Binds the socket, creating its folder and replacing a stale socket file
/// (but not one a live daemon answers on).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("{} is in use by a running XenStore daemon", path.display()),
        ));
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}
