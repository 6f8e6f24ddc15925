//! The monitor's voice in the XenStore registry: a thread with a small
//! tokio runtime that publishes the service's entry, keeps it current,
//! watches its `boot` key (the DNS service writes it), registers again after
//! the XenStore daemon restarts, and removes the entry when the monitor ends.
//! Without a XenStore daemon the monitor works all the same; this thread
//! just keeps trying to connect.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use jitsu_registry::{self as registry, Service};
use jitsu_xenstore::Client;
use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::sync::{mpsc, Notify};

pub struct RegistryAgent {
    tx: mpsc::UnboundedSender<Service>,
    /// Told when the monitor ends; heard wherever the agent is waiting.
    shutdown: Arc<Notify>,
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
        let shutdown = Arc::new(Notify::new());
        let told = shutdown.clone();
        let waker = Waker { wake, generation };
        let thread = thread::Builder::new()
            .name("registry".into())
            .spawn(move || runtime.block_on(agent(socket, service, rx, waker, told)))?;
        Ok(RegistryAgent {
            tx,
            shutdown,
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
        let _ = self.tx.send(service);
    }
}

impl Drop for RegistryAgent {
    /// Bounded however XenStore behaves: the agent stops whatever it is
    /// waiting for and spends at most [`REMOVE_DEADLINE`] removing the entry.
    fn drop(&mut self) {
        self.shutdown.notify_one();
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

/// How long removing the entry may take when the monitor ends.
const REMOVE_DEADLINE: Duration = Duration::from_secs(1);
/// Requests to XenStore while serving: a hung daemon costs a reconnect.
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);

async fn agent(
    socket: PathBuf,
    current: Service,
    rx: mpsc::UnboundedReceiver<Service>,
    wake: Waker,
    shutdown: Arc<Notify>,
) {
    let (name, owner) = (current.name.clone(), current.owner.clone());
    tokio::select! {
        biased;
        () = shutdown.notified() => {}
        () = keep_registered(&socket, current, rx, &wake) => {}
    }
    let removed = tokio::time::timeout(REMOVE_DEADLINE, async {
        let client = Client::connect(&socket).await?;
        registry::remove(&client, &name, &owner).await
    });
    match removed.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(%e, "removing the registry entry"),
        Err(_) => {
            tracing::warn!("removing the registry entry: no answer within {REMOVE_DEADLINE:?}")
        }
    }
}

/// Connects, registers and serves, again after every loss, until the
/// supervisor is gone.
async fn keep_registered(
    socket: &Path,
    mut current: Service,
    mut rx: mpsc::UnboundedReceiver<Service>,
    wake: &Waker,
) {
    loop {
        let client = tokio::select! {
            connected = Client::connect(socket) => connected.ok(),
            service = rx.recv() => match service {
                Some(s) => { current = s; continue }
                None => return,
            },
        };
        let Some(client) = client else {
            tokio::time::sleep(RETRY).await;
            continue;
        };
        let client = client.with_deadline(REQUEST_DEADLINE);
        match serve(&client, &mut current, &mut rx, wake).await {
            Served::Shutdown => return,
            Served::Lost => {
                tracing::info!("XenStore connection lost; registering again");
                tokio::time::sleep(RETRY).await;
            }
            Served::Taken(holder) => {
                tracing::warn!(
                    name = %current.name, %holder,
                    "the name is registered by another service; waiting until it is free"
                );
                // Meanwhile the service runs on: keep its latest state.
                let name = current.name.clone();
                let changed = owner_changes(&client, &name);
                tokio::pin!(changed);
                loop {
                    tokio::select! {
                        watched = &mut changed => {
                            if !watched {
                                tokio::time::sleep(RETRY).await;
                            }
                            break;
                        }
                        service = rx.recv() => match service {
                            Some(s) => current = s,
                            None => return,
                        },
                    }
                }
            }
        }
    }
}

enum Served {
    Shutdown,
    Lost,
    /// Another owner holds the name.
    Taken(String),
}

/// Waits for the name's owner to change (or its entry to go); false if the
/// watch could not be set or broke.
async fn owner_changes(client: &Client, name: &str) -> bool {
    let path = format!("{}/owner", registry::service_path(name));
    let Ok(mut watch) = client.watch(&path).await else {
        return false;
    };
    // A watch fires once when it is set.
    watch.next().await.is_some() && watch.next().await.is_some()
}

/// Registers and serves one connection until it breaks or the monitor ends.
async fn serve(
    client: &Client,
    current: &mut Service,
    rx: &mut mpsc::UnboundedReceiver<Service>,
    wake: &Waker,
) -> Served {
    let boot_path = format!("{}/boot", registry::service_path(&current.name));
    match registry::publish(client, current).await {
        Ok(()) => {}
        Err(registry::RegistryError::Taken { owner, .. }) => return Served::Taken(owner),
        Err(_) => return Served::Lost,
    }
    // A boot key left from before this registration is not a request.
    if client.rm(&boot_path).await.is_err() {
        return Served::Lost;
    }
    let mut published = current.clone();
    let Ok(mut watch) = client.watch(&boot_path).await else {
        return Served::Lost;
    };
    tracing::info!(name = %current.name, "registered in XenStore");
    loop {
        tokio::select! {
            service = rx.recv() => match service {
                Some(s) => {
                    *current = s;
                    if let Err(e) = registry::update(client, &published, current).await {
                        tracing::warn!(%e, "updating the registry");
                        return Served::Lost;
                    }
                    published = current.clone();
                }
                None => return Served::Shutdown,
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
