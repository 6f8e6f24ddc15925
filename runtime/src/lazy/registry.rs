//! The monitor's voice in the XenStore registry: a thread with a small
//! tokio runtime that publishes the service's entry, keeps it current,
//! watches its `boot` key (the DNS service writes it), registers again after
//! the XenStore daemon restarts, and removes the entry when the monitor ends.
//! Without a XenStore daemon the monitor works all the same; this thread
//! just keeps trying to connect.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use jitsu_xenstore::registry::{self, Service};
use jitsu_xenstore::Client;
use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::sync::mpsc;

enum Message {
    Publish(Service),
    Shutdown,
}

pub struct RegistryAgent {
    tx: mpsc::UnboundedSender<Message>,
    boot_requested: Arc<EventFd>,
    /// The generation the latest boot request is for.
    requested_for: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl RegistryAgent {
    pub fn start(socket: PathBuf, service: Service) -> std::io::Result<RegistryAgent> {
        let boot_requested = Arc::new(EventFd::from_value_and_flags(
            0,
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        let (tx, rx) = mpsc::unbounded_channel();
        let wake = boot_requested.clone();
        let requested_for = Arc::new(AtomicU64::new(0));
        let generation = requested_for.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = thread::Builder::new()
            .name("registry".into())
            .spawn(move || {
                runtime.block_on(agent(socket, service, rx, Waker { wake, generation }))
            })?;
        Ok(RegistryAgent {
            tx,
            boot_requested,
            requested_for,
            thread: Some(thread),
        })
    }

    /// Readable when a boot was requested through the registry.
    pub fn boot_fd(&self) -> BorrowedFd<'_> {
        self.boot_requested.as_fd()
    }

    /// The generation of a boot requested since the last call, if any. The
    /// caller compares it with its own: a request for an earlier parking
    /// (its event can arrive late) is stale.
    pub fn take_boot_request(&self) -> Option<u64> {
        self.boot_requested
            .read()
            .ok()
            .map(|_| self.requested_for.load(Ordering::Acquire))
    }

    pub fn publish(&self, service: Service) {
        let _ = self.tx.send(Message::Publish(service));
    }
}

impl Drop for RegistryAgent {
    fn drop(&mut self) {
        let _ = self.tx.send(Message::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

const RETRY: Duration = Duration::from_millis(50);

/// How the agent tells the supervisor about a boot request.
struct Waker {
    wake: Arc<EventFd>,
    generation: Arc<AtomicU64>,
}

async fn agent(
    socket: PathBuf,
    mut current: Service,
    mut rx: mpsc::UnboundedReceiver<Message>,
    wake: Waker,
) {
    loop {
        let client = tokio::select! {
            connected = Client::connect(&socket) => connected.ok(),
            msg = rx.recv() => match msg {
                Some(Message::Publish(s)) => { current = s; continue }
                Some(Message::Shutdown) | None => return,
            },
        };
        let Some(client) = client else {
            tokio::time::sleep(RETRY).await;
            continue;
        };
        match serve(&client, &mut current, &mut rx, &wake).await {
            Served::Shutdown => {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    registry::remove(&client, &current.name),
                )
                .await;
                return;
            }
            Served::Lost => {
                tracing::info!("XenStore connection lost; registering again");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

enum Served {
    Shutdown,
    Lost,
}

/// Registers and serves one connection until it breaks or the monitor ends.
async fn serve(
    client: &Client,
    current: &mut Service,
    rx: &mut mpsc::UnboundedReceiver<Message>,
    wake: &Waker,
) -> Served {
    let boot_path = format!("{}/boot", registry::service_path(&current.name));
    // A boot key left from before this registration is not a request.
    if registry::publish(client, current).await.is_err() || client.rm(&boot_path).await.is_err() {
        return Served::Lost;
    }
    let mut published = current.clone();
    let Ok(mut watch) = client.watch(&boot_path).await else {
        return Served::Lost;
    };
    tracing::info!(name = %current.name, "registered in XenStore");
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Message::Publish(s)) => {
                    *current = s;
                    if let Err(e) = registry::update(client, &published, current).await {
                        tracing::warn!(%e, "updating the registry");
                        return Served::Lost;
                    }
                    published = current.clone();
                }
                Some(Message::Shutdown) | None => return Served::Shutdown,
            },
            event = watch.next() => {
                if event.is_none() {
                    tracing::warn!("the boot watch ended");
                    return Served::Lost;
                }
                match client.read(&boot_path).await {
                    Ok(value) if !value.is_empty() => {
                        // Generation 0 is no parking's: the supervisor ignores
                        // (and counts) a request that names none.
                        let generation = registry::parse_boot_request(&value).unwrap_or(0);
                        wake.generation.store(generation, Ordering::Release);
                        let _ = wake.wake.write(1);
                    }
                    Ok(_) | Err(jitsu_xenstore::ClientError::Xs(_)) => {}
                    Err(e) => {
                        tracing::warn!(%e, "reading the boot request");
                        return Served::Lost;
                    }
                }
            }
        }
    }
}
