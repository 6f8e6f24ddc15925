//! A monitor's Conduit broker: a thread (a small tokio runtime, as the
//! registry agent has) that
//!
//! - registers the unikernel's name under `/conduit` and watches it: a
//!   request filed there for a parked unikernel boots it ([`Broker::boot_fd`]);
//! - accepts other monitors on the name's socket: proves who they are,
//!   asks the policy, makes the channel's memory and signals, writes the
//!   metadata, and hands all of it over (SCM_RIGHTS);
//! - connects out for its guest: files the request, proves the listener,
//!   and takes the channel it is handed;
//! - watches every channel's connection, whose end means the other monitor
//!   is gone (however it ended), and says so to its guest.
//!
//! The vCPU thread's device reaches it through a [`BrokerHandle`]: commands
//! one way, deliveries (channels, refusals) the other, with an eventfd that
//! the guest's poll wakes on.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use jitsu_vchan::rendezvous::Request;
use jitsu_vchan::{Endpoint, Region, Role};
use jitsu_xenstore::Client;
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{
    accept4, connect, getsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, UnixAddr,
};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

use crate::anchor::Dir;
use crate::channel::{signal_eventfd, Channel};
use crate::memory::ChannelMemory;
use crate::policy::Policy;
use crate::rendezvous;
use crate::wire::{self, Packet, Reason, Received};

/// How long a peer may take to say what it wants, and a listener to answer
/// (it may be building its VM, or booting).
const HELLO_DEADLINE: Duration = Duration::from_secs(5);
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);
/// XenStore requests while serving; a hung daemon costs a reconnect.
const XENSTORE_DEADLINE: Duration = Duration::from_secs(2);
const RETRY: Duration = Duration::from_millis(50);
/// A [`BrokerConfig::domid`] that names no domain yet: the name is
/// registered at the first [`Broker::move_to`].
pub const NO_DOMAIN: u32 = u32::MAX;

pub struct BrokerConfig {
    /// This unikernel's Conduit name.
    pub name: String,
    pub policy: Policy,
    /// The socket directory, as this process sees it, and the name's
    /// listener socket, bound (before the jail) with [`Dir::bind_listener`].
    /// None where guests hand channels over themselves (Xen's grants): the
    /// broker then only keeps the name registered for the guest's domain
    /// and boots it on a request.
    pub sockets: Option<(Dir, OwnedFd)>,
    /// The XenStore daemon's socket, as this process sees it.
    pub xenstore: PathBuf,
    /// The domain the name stands for: this monitor's XenStore domain (a
    /// KVM monitor's), or its guest's (a Xen domain, which changes at each
    /// parking: [`Broker::move_to`]).
    pub domid: u32,
    /// The XenStore domain of a peer monitor's uid (None: a stranger).
    pub identity: fn(u32) -> Option<u32>,
    /// At most this many channels open at once (the guest's slots).
    pub max_channels: u32,
}

/// What the broker hands the guest's device.
#[derive(Debug)]
pub enum Delivery {
    /// A client connected to our name.
    Accepted(Arc<Channel>),
    /// Our connect in `slot` went through.
    Connected { slot: u32, channel: Arc<Channel> },
    /// Our connect in `slot` was refused (the reason, in words, is logged).
    Refused { slot: u32, reason: Reason },
}

enum Command {
    Connect {
        slot: u32,
        server: String,
        port: String,
        left_order: u16,
        right_order: u16,
    },
    Release(Arc<Channel>),
}

struct Shared {
    name: String,
    /// What the device asks, with an eventfd the broker waits on: the
    /// vCPU thread may write only eventfds in the signal range, so it
    /// cannot wake a tokio runtime the usual way.
    commands: Mutex<VecDeque<Command>>,
    commanded: OwnedFd,
    deliveries: Mutex<VecDeque<Delivery>>,
    /// Readable while deliveries wait; in the signal range, since the vCPU
    /// thread polls and drains it.
    ready: OwnedFd,
    /// Readable once a request (a connection, or a XenStore request) came
    /// for our name: the supervisor boots a parked guest.
    boot: EventFd,
    open: AtomicU32,
    max_channels: u32,
    /// The domain the name stands for, and a word when it changes.
    domid: AtomicU32,
    moved: Notify,
    /// Connections refused, over the monitor's life.
    refused: AtomicU64,
}

impl Shared {
    fn deliver(&self, delivery: Delivery) {
        if matches!(delivery, Delivery::Accepted(_) | Delivery::Connected { .. }) {
            self.open.fetch_add(1, Ordering::AcqRel);
        }
        self.deliveries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(delivery);
        let _ = nix::unistd::write(&self.ready, &1u64.to_ne_bytes());
    }

    fn ask_for_boot(&self) {
        let _ = self.boot.write(1);
    }

    fn command(&self, command: Command) {
        self.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(command);
        let _ = nix::unistd::write(&self.commanded, &1u64.to_ne_bytes());
    }

    fn take_commands(&self) -> VecDeque<Command> {
        let mut count = [0u8; 8];
        let _ = nix::unistd::read(self.commanded.as_fd(), &mut count);
        std::mem::take(&mut *self.commands.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The device's side of the broker.
#[derive(Clone)]
pub struct BrokerHandle {
    shared: Arc<Shared>,
}

impl BrokerHandle {
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Asks for a channel to `server` on `port`, in `slot`; a delivery for
    /// the slot follows.
    pub fn connect(&self, slot: u32, server: &str, port: &str, left_order: u16, right_order: u16) {
        self.shared.command(Command::Connect {
            slot,
            server: server.into(),
            port: port.into(),
            left_order,
            right_order,
        });
    }

    /// The device is done with `channel` (its guest closed it, or is gone):
    /// the broker closes its connection and drops it (descriptors are
    /// closed there, not on the vCPU thread).
    pub fn release(&self, channel: Arc<Channel>) {
        self.shared.open.fetch_sub(1, Ordering::AcqRel);
        self.shared.command(Command::Release(channel));
    }

    /// The next delivery, if one waits.
    pub fn take(&self) -> Option<Delivery> {
        let mut queue = self
            .shared
            .deliveries
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let next = queue.pop_front();
        if queue.is_empty() {
            let mut count = [0u8; 8];
            let _ = nix::unistd::read(self.shared.ready.as_fd(), &mut count);
        }
        next
    }

    /// Readable while a delivery waits.
    pub fn ready_fd(&self) -> BorrowedFd<'_> {
        self.shared.ready.as_fd()
    }
}

pub struct Broker {
    handle: BrokerHandle,
    shutdown: Arc<Notify>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Broker {
    pub fn start(config: BrokerConfig) -> std::io::Result<Broker> {
        // A peer reads the listener's credentials as they were at its
        // last listen(): listening again now gives it the uid this
        // monitor runs as (in its jail), the one its socket file names.
        if let Some((_, listener)) = &config.sockets {
            let backlog = nix::sys::socket::Backlog::new(128).expect("a valid backlog");
            nix::sys::socket::listen(listener, backlog)?;
        }
        let ready = signal_eventfd()?;
        let commanded = signal_eventfd()?;
        let shared = Arc::new(Shared {
            name: config.name.clone(),
            commands: Mutex::new(VecDeque::new()),
            commanded,
            deliveries: Mutex::new(VecDeque::new()),
            ready,
            boot: EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?,
            open: AtomicU32::new(0),
            max_channels: config.max_channels,
            domid: AtomicU32::new(config.domid),
            moved: Notify::new(),
            refused: AtomicU64::new(0),
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let shutdown = Arc::new(Notify::new());
        let told = shutdown.clone();
        let for_thread = shared.clone();
        let thread = thread::Builder::new()
            .name("conduit".into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, serve(config, for_thread, told));
            })?;
        Ok(Broker {
            handle: BrokerHandle { shared },
            shutdown,
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> BrokerHandle {
        self.handle.clone()
    }

    /// Readable once someone asked for our name since the last
    /// [`Broker::take_boot_request`].
    pub fn boot_fd(&self) -> BorrowedFd<'_> {
        self.handle.shared.boot.as_fd()
    }

    pub fn take_boot_request(&self) -> bool {
        self.handle.shared.boot.read().is_ok()
    }

    /// Channels open now.
    pub fn open_channels(&self) -> u32 {
        self.handle.shared.open.load(Ordering::Acquire)
    }

    /// The name now stands for domain `domid` (a Xen guest's fresh domain):
    /// it is registered again for it.
    pub fn move_to(&self, domid: u32) {
        let shared = &self.handle.shared;
        if shared.domid.swap(domid, Ordering::AcqRel) != domid {
            shared.moved.notify_one();
        }
    }

    /// Connections this listener refused.
    pub fn refused(&self) -> u64 {
        self.handle.shared.refused.load(Ordering::Relaxed)
    }
}

impl Drop for Broker {
    /// Bounded: the broker stops what it waits for and spends at most a
    /// second taking the name out of XenStore.
    fn drop(&mut self) {
        self.shutdown.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What every task of the broker shares (one thread: no locks).
struct Context {
    config: BrokerConfig,
    shared: Arc<Shared>,
    /// The XenStore connection, while there is one.
    xenstore: RefCell<Option<Client>>,
    /// Told whenever the XenStore connection is (re)made.
    connected: Notify,
    /// How to end each open channel's connection, by channel.
    links: RefCell<HashMap<usize, Rc<Notify>>>,
    /// The requests this monitor has filed and not withdrawn yet (the
    /// broker withdraws them if it ends first).
    filed: RefCell<std::collections::HashSet<(String, String)>>,
}

impl Context {
    fn xenstore(&self) -> Option<Client> {
        self.xenstore.borrow().clone()
    }

    /// The XenStore connection, waiting a while for one (a guest may ask
    /// for a channel before its monitor has registered).
    async fn xenstore_soon(&self) -> Option<Client> {
        let wait = async {
            loop {
                let told = self.connected.notified();
                if let Some(client) = self.xenstore() {
                    return client;
                }
                told.await;
            }
        };
        tokio::time::timeout(XENSTORE_DEADLINE, wait).await.ok()
    }

    fn refuse(&self, slot: u32, reason: Reason, why: &str) {
        tracing::warn!(slot, ?reason, why, "conduit connect refused");
        self.shared.deliver(Delivery::Refused { slot, reason });
    }
}

fn channel_key(channel: &Arc<Channel>) -> usize {
    Arc::as_ptr(channel) as usize
}

async fn serve(config: BrokerConfig, shared: Arc<Shared>, shutdown: Arc<Notify>) {
    let commanded = match shared.commanded.try_clone().and_then(reactor_fd) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(%e, "the Conduit broker's command signal");
            return;
        }
    };
    let listener = match &config.sockets {
        Some((_, listener)) => match listener.try_clone().and_then(reactor_fd) {
            Ok(listener) => Some(listener),
            Err(e) => {
                tracing::error!(%e, "the Conduit listener");
                return;
            }
        },
        None => None,
    };
    let ctx = Rc::new(Context {
        config,
        shared,
        xenstore: RefCell::new(None),
        connected: Notify::new(),
        links: RefCell::new(HashMap::new()),
        filed: RefCell::new(Default::default()),
    });
    let registration = tokio::task::spawn_local(keep_registered(ctx.clone()));
    loop {
        tokio::select! {
            biased;
            () = shutdown.notified() => break,
            ready = commanded.readable() => {
                let Ok(mut guard) = ready else { break };
                guard.clear_ready();
                for command in ctx.shared.take_commands() {
                    obey(&ctx, command);
                }
            }
            accepted = readable(listener.as_ref()) => {
                let (Ok(mut guard), Some(listener)) = (accepted, listener.as_ref()) else { break };
                match accept4(listener.get_ref().as_raw_fd(), SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK) {
                    Ok(fd) => {
                        // SAFETY: accept4 returned a fresh descriptor we own.
                        let conn = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                        let ctx = ctx.clone();
                        tokio::task::spawn_local(async move { serve_incoming(&ctx, conn).await });
                    }
                    Err(nix::Error::EAGAIN) => guard.clear_ready(),
                    Err(e) => tracing::warn!(%e, "accepting a Conduit connection"),
                }
            }
        }
    }
    // Every open channel's connection goes with this thread's end (the
    // descriptors close as the tasks are dropped); the requests this side
    // filed are withdrawn, and the name leaves XenStore.
    // Nothing registers the name again from here on.
    registration.abort();
    let client = match ctx.xenstore() {
        Some(client) => Some(client),
        None => tokio::time::timeout(
            Duration::from_secs(1),
            Client::connect(&ctx.config.xenstore),
        )
        .await
        .ok()
        .and_then(Result::ok),
    };
    if let Some(client) = client {
        let name = ctx.config.name.clone();
        let domid = ctx.shared.domid.load(Ordering::Acquire);
        let filed: Vec<(String, String)> = ctx.filed.borrow_mut().drain().collect();
        let removed = tokio::time::timeout(XENSTORE_DEADLINE, async {
            rendezvous::unregister(&client, &name, domid).await?;
            for (server, port) in filed {
                if let Ok(request) = Request::new(&server, &name, &port) {
                    rendezvous::withdraw(&client, &request).await?;
                }
            }
            Ok::<(), jitsu_xenstore::ClientError>(())
        })
        .await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(%e, name, "taking the Conduit name out of XenStore"),
            Err(_) => tracing::warn!(name, "taking the Conduit name out of XenStore: no answer"),
        }
    }
}

fn obey(ctx: &Rc<Context>, command: Command) {
    match command {
        Command::Connect {
            slot,
            server,
            port,
            left_order,
            right_order,
        } => {
            let ctx = ctx.clone();
            tokio::task::spawn_local(async move {
                connect_out(&ctx, slot, &server, &port, left_order, right_order).await;
            });
        }
        Command::Release(channel) => {
            if let Some(end) = ctx.links.borrow_mut().remove(&channel_key(&channel)) {
                end.notify_one();
            }
        }
    }
}

/// Readable when `fd` is, for ever pending without one.
async fn readable(
    fd: Option<&AsyncFd<OwnedFd>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, OwnedFd>> {
    match fd {
        Some(fd) => fd.readable().await,
        None => std::future::pending().await,
    }
}

/// Registers the name and watches it; again after every loss of XenStore,
/// and for a new domain when the name moves to one.
async fn keep_registered(ctx: Rc<Context>) {
    let name = ctx.config.name.clone();
    loop {
        let Ok(client) = Client::connect(&ctx.config.xenstore).await else {
            tokio::time::sleep(RETRY).await;
            continue;
        };
        let client = client.with_deadline(XENSTORE_DEADLINE);
        let mut domid = ctx.shared.domid.load(Ordering::Acquire);
        while domid == NO_DOMAIN {
            ctx.shared.moved.notified().await;
            domid = ctx.shared.domid.load(Ordering::Acquire);
        }
        if let Err(e) = rendezvous::register(&client, &name, domid).await {
            tracing::warn!(%e, name, "registering the Conduit name");
            tokio::time::sleep(RETRY).await;
            continue;
        }
        let Ok(mut watch) = client.watch(&rendezvous::listener_path(&name)).await else {
            tokio::time::sleep(RETRY).await;
            continue;
        };
        tracing::info!(name, domid, "Conduit name registered");
        *ctx.xenstore.borrow_mut() = Some(client.clone());
        ctx.connected.notify_waiters();
        loop {
            tokio::select! {
                event = watch.next() => match event {
                    Some(event) => {
                        if rendezvous::request_for(&name, &event.path).is_some() {
                            ctx.shared.ask_for_boot();
                        }
                    }
                    None => {
                        tracing::info!("XenStore connection lost; registering the Conduit name again");
                        *ctx.xenstore.borrow_mut() = None;
                        tokio::time::sleep(RETRY).await;
                        break;
                    }
                },
                () = ctx.shared.moved.notified() => {
                    let now = ctx.shared.domid.load(Ordering::Acquire);
                    match rendezvous::register(&client, &name, now).await {
                        Ok(()) => tracing::debug!(name, domid = now, "Conduit name moved"),
                        Err(e) => {
                            tracing::warn!(%e, name, "moving the Conduit name");
                            *ctx.xenstore.borrow_mut() = None;
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// `fd`, watched by the runtime's reactor.
fn reactor_fd(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd stays open, and the same descriptor, until the
    // AsyncFd that owns it is dropped.
    Ok(unsafe { AsyncFd::register(fd) }?)
}

/// Who is on the other end of `conn`: its uid.
fn peer_uid(conn: &OwnedFd) -> Option<u32> {
    getsockopt(conn, sockopt::PeerCredentials)
        .ok()
        .map(|c| c.uid())
}

/// The next packet on `conn`, within `deadline`.
async fn next_packet(conn: &AsyncFd<OwnedFd>, deadline: Duration) -> Received {
    let wait = async {
        loop {
            let Ok(mut guard) = conn.readable().await else {
                return Received::Closed;
            };
            match wire::receive(conn.get_ref().as_fd()) {
                Received::Nothing => guard.clear_ready(),
                other => return other,
            }
        }
    };
    tokio::time::timeout(deadline, wait)
        .await
        .unwrap_or(Received::Closed)
}

/// A monitor connected to our name: the listener's side of the handshake.
async fn serve_incoming(ctx: &Rc<Context>, conn: OwnedFd) {
    let Some(uid) = peer_uid(&conn) else { return };
    let Ok(conn) = reactor_fd(conn) else { return };
    let Received::Packet(
        Packet::Connect {
            client,
            port,
            left_order,
            right_order,
        },
        _,
    ) = next_packet(&conn, HELLO_DEADLINE).await
    else {
        tracing::debug!("a Conduit peer said nothing we understand");
        return;
    };
    match accept(ctx, &conn, uid, &client, &port, left_order, right_order).await {
        Ok(channel) => {
            tracing::info!(client, port, "Conduit channel accepted");
            ctx.shared.deliver(Delivery::Accepted(channel.clone()));
            let request = Request::new(&ctx.config.name, &client, &port).expect("checked labels");
            let peer = (ctx.config.identity)(uid).unwrap_or(0);
            hold_link(ctx, conn, channel).await;
            if let Some(xs) = ctx.xenstore() {
                let domid = ctx.shared.domid.load(Ordering::Acquire);
                let _ = rendezvous::remove_metadata(&xs, &request, domid, peer).await;
            }
        }
        Err((reason, why)) => {
            ctx.shared.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(client, port, why, "Conduit connection refused");
            let _ = wire::send(conn.get_ref().as_fd(), &Packet::Refuse { reason, why }, &[]);
        }
    }
}

/// Checks a client, makes its channel and hands it over.
async fn accept(
    ctx: &Rc<Context>,
    conn: &AsyncFd<OwnedFd>,
    uid: u32,
    client: &str,
    port: &str,
    left_order: u16,
    right_order: u16,
) -> Result<Arc<Channel>, (Reason, String)> {
    let config = &ctx.config;
    let not_allowed = |why: String| (Reason::NotAllowed, why);
    let peer = (config.identity)(uid)
        .ok_or_else(|| not_allowed(format!("uid {uid} is not a monitor's")))?;
    let anchored = config
        .sockets
        .as_ref()
        .and_then(|(dir, _)| dir.anchored(client))
        .filter(|a| a.uid == uid)
        .ok_or_else(|| {
            not_allowed(format!(
                "the peer (uid {uid}) cannot prove the name {client}"
            ))
        })?;
    config
        .policy
        .check(client, &anchored.group)
        .map_err(not_allowed)?;
    let region = Region::of(left_order, right_order)
        .map_err(|e| (Reason::Unreachable, format!("ring orders: {e}")))?;
    let request = Request::new(&config.name, client, port)
        .map_err(|e| (Reason::Unreachable, e.to_string()))?;
    let xs = ctx
        .xenstore_soon()
        .await
        .ok_or((Reason::Unreachable, "XenStore is unreachable".to_string()))?;
    match rendezvous::filed_by(&xs, &request).await {
        Ok(Some(domain)) if domain == peer => {}
        Ok(_) => {
            let path = rendezvous::request_path(&request);
            return Err(not_allowed(format!(
                "no request of domain {peer} at {path}"
            )));
        }
        Err(e) => return Err((Reason::Unreachable, format!("XenStore: {e}"))),
    }
    if ctx.shared.open.load(Ordering::Acquire) >= ctx.shared.max_channels {
        return Err((
            Reason::Busy,
            format!("all {} channels are open", ctx.shared.max_channels),
        ));
    }
    ctx.shared.ask_for_boot();
    let made = (|| -> std::io::Result<_> {
        let memory = ChannelMemory::create(region).map_err(std::io::Error::other)?;
        Endpoint::lay_out(&memory.parts().ctrl, left_order, right_order)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok((memory, signal_eventfd()?, signal_eventfd()?))
    })();
    let (memory, to_client, to_server) =
        made.map_err(|e| (Reason::Busy, format!("making the channel: {e}")))?;
    let fields = [
        ("transport", "kvm-memfd".to_string()),
        ("left-order", left_order.to_string()),
        ("right-order", right_order.to_string()),
    ];
    let domid = ctx.shared.domid.load(Ordering::Acquire);
    if let Err(e) = rendezvous::publish_metadata(&xs, &request, domid, peer, &fields).await {
        return Err((Reason::Unreachable, format!("XenStore: {e}")));
    }
    let accept = Packet::Accept {
        left_order,
        right_order,
    };
    let fds = [memory.fd(), to_client.as_fd(), to_server.as_fd()];
    wire::send(conn.get_ref().as_fd(), &accept, &fds).map_err(|e| {
        (
            Reason::Unreachable,
            format!("handing the channel over: {e}"),
        )
    })?;
    Ok(Arc::new(Channel::new(
        memory,
        Role::Server,
        to_client,
        to_server,
        client.into(),
        port.into(),
    )))
}

/// Keeps a channel's connection until either side ends it: the peer's
/// monitor (then our guest is told), or our device (then the peer's
/// monitor sees the connection end).
async fn hold_link(ctx: &Rc<Context>, conn: AsyncFd<OwnedFd>, channel: Arc<Channel>) {
    let end = Rc::new(Notify::new());
    ctx.links
        .borrow_mut()
        .insert(channel_key(&channel), end.clone());
    let peer_gone = async {
        loop {
            let Ok(mut guard) = conn.readable().await else {
                return;
            };
            match wire::receive(conn.get_ref().as_fd()) {
                Received::Nothing => guard.clear_ready(),
                // Nothing more is ever said: anything is the end.
                _ => return,
            }
        }
    };
    tokio::select! {
        () = peer_gone => {
            tracing::debug!(peer = channel.peer, "the Conduit peer's monitor ended the channel");
            channel.peer_gone();
        }
        () = end.notified() => {}
    }
    ctx.links.borrow_mut().remove(&channel_key(&channel));
}

/// Our guest asked for a channel: the connecting side of the handshake.
async fn connect_out(
    ctx: &Rc<Context>,
    slot: u32,
    server: &str,
    port: &str,
    left_order: u16,
    right_order: u16,
) {
    let config = &ctx.config;
    let request = match Request::new(server, &config.name, port) {
        Ok(request) => request,
        Err(e) => return ctx.refuse(slot, Reason::NoListener, &e.to_string()),
    };
    let Some((dir, _)) = &config.sockets else {
        return ctx.refuse(
            slot,
            Reason::Unreachable,
            "this monitor hands no channels over",
        );
    };
    let path = dir.socket_path(server);
    let conn = match dial(&path) {
        Ok(conn) => conn,
        Err(e) => {
            return ctx.refuse(
                slot,
                Reason::NoListener,
                &format!("no unikernel listens as {server} ({}: {e})", path.display()),
            )
        }
    };
    let listener_uid = dir.anchored(server).map(|a| a.uid);
    if peer_uid(&conn).is_none() || peer_uid(&conn) != listener_uid {
        return ctx.refuse(
            slot,
            Reason::Unreachable,
            &format!("the peer on {} is not {server}'s monitor", path.display()),
        );
    }
    let Some(xs) = ctx.xenstore_soon().await else {
        return ctx.refuse(slot, Reason::Unreachable, "XenStore is unreachable");
    };
    let domid = ctx.shared.domid.load(Ordering::Acquire);
    if let Err(e) = rendezvous::file(&xs, &request, domid).await {
        return ctx.refuse(
            slot,
            Reason::Unreachable,
            &format!("filing the request: {e}"),
        );
    }
    let filed = (server.to_string(), port.to_string());
    ctx.filed.borrow_mut().insert(filed.clone());
    let hello = Packet::Connect {
        client: config.name.clone(),
        port: port.into(),
        left_order,
        right_order,
    };
    let Ok(conn) = reactor_fd(conn) else {
        return ctx.refuse(slot, Reason::Unreachable, "polling the connection");
    };
    if let Err(e) = wire::send(conn.get_ref().as_fd(), &hello, &[]) {
        return ctx.refuse(slot, Reason::Unreachable, &format!("asking {server}: {e}"));
    }
    let channel = match next_packet(&conn, ANSWER_DEADLINE).await {
        Received::Packet(
            Packet::Accept {
                left_order,
                right_order,
            },
            fds,
        ) => take_channel(left_order, right_order, fds, server, port),
        Received::Packet(Packet::Refuse { reason, why }, _) => Err((reason, why)),
        other => Err((
            Reason::Unreachable,
            format!("{server}'s monitor answered {other:?}"),
        )),
    };
    match channel {
        Ok(channel) => {
            tracing::info!(server, port, slot, "Conduit channel connected");
            ctx.shared.deliver(Delivery::Connected {
                slot,
                channel: channel.clone(),
            });
            hold_link(ctx, conn, channel).await;
        }
        Err((reason, why)) => ctx.refuse(slot, reason, &why),
    }
    if let Some(xs) = ctx.xenstore() {
        if rendezvous::withdraw(&xs, &request).await.is_ok() {
            ctx.filed.borrow_mut().remove(&filed);
        }
    }
}

/// Connects to a listener's socket. A full backlog (EAGAIN) is a busy
/// listener, not a missing one.
fn dial(path: &std::path::Path) -> nix::Result<OwnedFd> {
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(fd)
}

/// The channel a listener handed over, once its memory and descriptors
/// are checked.
fn take_channel(
    left_order: u16,
    right_order: u16,
    fds: Vec<OwnedFd>,
    server: &str,
    port: &str,
) -> Result<Arc<Channel>, (Reason, String)> {
    let broken = |why: String| (Reason::Unreachable, format!("{server}'s channel: {why}"));
    let region = Region::of(left_order, right_order).map_err(|e| broken(e.to_string()))?;
    let [memfd, to_client, to_server]: [OwnedFd; 3] =
        fds.try_into().map_err(|_| broken("descriptors".into()))?;
    let memory = ChannelMemory::adopt(memfd, region).map_err(|e| broken(e.to_string()))?;
    let wake = crate::channel::into_signal_range(to_client).map_err(|e| broken(e.to_string()))?;
    let signal = crate::channel::into_signal_range(to_server).map_err(|e| broken(e.to_string()))?;
    Ok(Arc::new(Channel::new(
        memory,
        Role::Client,
        signal,
        wake,
        server.into(),
        port.into(),
    )))
}
