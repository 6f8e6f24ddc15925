//! Where Xen plugs into the lazy supervisor: the [`jitsu_runtime::Backend`]
//! traits over domains.
//!
//! - **Parked**: the domain built and paused, its vif on the bridge, and the
//!   service's MAC pinned to a TAP of ours on the same bridge, which
//!   Synjitsu reads (a paused domain's vif answers nothing: netback has no
//!   frontend yet). With [`ParkAt::Ready`] the domain is instead run until
//!   its netfront has connected, then paused.
//! - **Boot**: unpause. The held frames wait until netback says the vif is
//!   connected (the supervisor meanwhile goes on feeding Synjitsu); then
//!   they go straight into the vif, in order, the MAC is pinned to the vif,
//!   whatever reached the TAP meanwhile follows, and the TAP goes down.
//! - **Idle**: a guest that has sent nothing for the timeout (the vif's
//!   count of frames from it) is paused, the MAC pinned back to the TAP (new
//!   frames wait there for Synjitsu), and the count read again; busy after
//!   all, undo and unpause;
//!   else destroy, and the supervisor builds a fresh domain. A domain is
//!   never parked again by pausing it: its TCP state, timers and clock would
//!   be a stale machine's when it woke, and clients' connections to it could
//!   not be told apart from a fresh boot's.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jitsu_runtime::backend::{Backend, FramePort, IdleStop, Parked, Running};
use jitsu_runtime::clock;
use jitsu_runtime::tap::{Tap, TapError};
use thiserror::Error;

use crate::bridge::{Bridge, BridgeError};
use crate::console::{ConsoleRelay, Finish};
use crate::domain::{Domain, DomainConfig, DomainError, NetConfig};
use crate::report::Report;
use crate::toolstack::Toolstack;
use crate::vif::{Vif, VifError};

/// netback's XenbusStateConnected.
const CONNECTED: &str = "4";
/// A booted guest whose netfront has not connected by then never will: it
/// is ended as a failure (it cannot be reached, and Synjitsu would hold its
/// clients' frames for ever).
const LINK_DEADLINE: Duration = Duration::from_secs(60);

/// What a parked domain has done already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkAt {
    /// Built, never run: boot is unpause and the guest's whole start.
    Entry,
    /// Run until its netfront connected, then paused: boot is unpause.
    Ready,
}

#[derive(Debug, Error)]
pub enum XenError {
    #[error("a lazy Xen service needs a network (--net BRIDGE --ip ADDR/PREFIX)")]
    NoNetwork,
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Bridge(#[from] BridgeError),
    #[error(transparent)]
    Vif(#[from] VifError),
    #[error("the stand-in TAP: {0}")]
    Tap(#[from] TapError),
    #[error("the console relay: {0}")]
    Console(std::io::Error),
    #[error("the guest's netfront did not connect within {0:?}")]
    LinkTimeout(Duration),
}

/// The service's MAC and the two ports it may be pinned to.
struct Link {
    bridge: Bridge,
    mac: [u8; 6],
    stand_in: Tap,
    stand_in_index: u32,
}

impl Link {
    /// Frames for the service go to Synjitsu's TAP.
    fn to_stand_in(&self) -> Result<(), XenError> {
        self.bridge.set_up(self.stand_in_index, true)?;
        self.bridge.pin(self.mac, self.stand_in_index)?;
        Ok(())
    }

    /// Frames for the service go to the guest: those in `first`, then those
    /// the TAP has taken, then the rest through the bridge. Frames the vif
    /// refuses (a guest gone meanwhile) are lost with it.
    fn to_guest(&self, vif: &Vif, first: &[Vec<u8>]) -> Result<(), XenError> {
        let mut sent = 0usize;
        let mut send = |frame: &[u8]| match vif.send(frame) {
            Ok(()) => sent += 1,
            Err(e) => tracing::warn!(%e, "a held frame did not reach the guest"),
        };
        first.iter().for_each(|f| send(f));
        // What the TAP holds now, then (after the pin moves) what the
        // bridge gave it meanwhile: the window in which a newer frame could
        // pass an older one is the pin's netlink round trip.
        let mut buf = vec![0u8; self.stand_in.max_frame()];
        while let Ok(n) = self.stand_in.recv(&mut buf) {
            send(&buf[..n]);
        }
        self.bridge.pin(self.mac, vif.index())?;
        while let Ok(n) = self.stand_in.recv(&mut buf) {
            send(&buf[..n]);
        }
        self.bridge.set_up(self.stand_in_index, false)?;
        tracing::debug!(sent, vif = vif.name(), "the guest has its link");
        Ok(())
    }
}

pub struct XenBackend {
    toolstack: Rc<Toolstack>,
    config: DomainConfig,
    link: Rc<Link>,
    park_at: ParkAt,
    console_dropped: Arc<AtomicU64>,
    /// How long a domain parked at its ready point may take to get there.
    ready_timeout: Duration,
}

impl XenBackend {
    /// Makes the bridge (if missing) and the stand-in TAP `stand_in` on it.
    pub fn new(
        toolstack: Toolstack,
        mut config: DomainConfig,
        stand_in: &str,
        park_at: ParkAt,
    ) -> Result<XenBackend, XenError> {
        let net: &mut NetConfig = config.net.as_mut().ok_or(XenError::NoNetwork)?;
        let gateway = net.gateway.map(|gw| (gw, net.prefix_len));
        let bridge = Bridge::ensure(&net.bridge, gateway)?;
        net.mtu = bridge.guest_mtu();
        let tap = Tap::create_private(stand_in)?;
        tap.admit_only(net.mac, net.ipv4)?;
        let stand_in_index =
            nix::net::if_::if_nametoindex(stand_in).map_err(|e| TapError::Attach {
                name: stand_in.into(),
                source: e.into(),
            })?;
        bridge.plug(stand_in_index)?;
        let link = Link {
            bridge,
            mac: net.mac,
            stand_in: tap,
            stand_in_index,
        };
        Ok(XenBackend {
            toolstack: Rc::new(toolstack),
            config,
            link: Rc::new(link),
            park_at,
            console_dropped: Arc::default(),
            ready_timeout: Duration::from_secs(120),
        })
    }

    /// Runs the domain until netback says its vif is connected, then pauses it.
    fn run_to_ready(&self, domain: &mut Domain, link_state: &str) -> Result<(), XenError> {
        let fd = domain
            .toolstack()
            .watch(link_state)
            .map_err(DomainError::from)?
            .try_clone_to_owned()
            .map_err(XenError::Console)?;
        let connected = domain
            .unpause()
            .and_then(|()| self.await_link(domain, link_state, &fd));
        let _ = domain.toolstack().unwatch(link_state);
        if !connected? {
            return Err(XenError::LinkTimeout(self.ready_timeout));
        }
        domain.pause()?;
        Ok(())
    }

    /// Waits on `fd` (the watch of `link_state`) until netback says the
    /// vif is connected (true), or the domain ends or the time is up (false).
    fn await_link(
        &self,
        domain: &Domain,
        link_state: &str,
        fd: &std::os::fd::OwnedFd,
    ) -> Result<bool, DomainError> {
        let toolstack = domain.toolstack();
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            toolstack.drain_watch();
            if toolstack.read(link_state).as_deref() == Some(CONNECTED) {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || domain.ended()? {
                return Ok(false);
            }
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(fd),
                nix::poll::PollFlags::POLLIN,
            )];
            let ms = left.as_millis().min(1000) as u16;
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
        }
    }
}

impl Backend for XenBackend {
    type Parked = XenParked;
    type Running = XenRunning;
    type Report = Report;
    type Error = XenError;

    fn prepare(&mut self) -> Result<XenParked, XenError> {
        // Events of domains that came and went while nobody looked.
        self.toolstack.drain_watch();
        self.toolstack.watch_domains().map_err(DomainError::from)?;
        let mut domain = Domain::create_paused(self.toolstack.clone(), &self.config)?;
        let vif = Vif::of_domain(domain.domid())?;
        self.link.to_stand_in()?;
        let console = domain
            .take_console()
            .map(|pty| ConsoleRelay::start(pty, self.console_dropped.clone()))
            .transpose()
            .map_err(XenError::Console)?;
        let link_state = format!("/local/domain/0/backend/vif/{}/0/state", domain.domid());
        if self.park_at == ParkAt::Ready {
            self.run_to_ready(&mut domain, &link_state)?;
        }
        tracing::debug!(domid = domain.domid(), vif = vif.name(), park_at = ?self.park_at, "parked");
        Ok(XenParked {
            domain,
            vif,
            console,
            link: self.link.clone(),
            link_state,
        })
    }

    fn frames(&self) -> &dyn FramePort {
        &self.link.stand_in
    }

    fn hypervisor(&self) -> &'static str {
        "xen"
    }

    fn console_dropped_bytes(&self) -> u64 {
        self.console_dropped.load(Ordering::Relaxed)
    }
}

pub struct XenParked {
    domain: Domain,
    vif: Vif,
    console: Option<ConsoleRelay>,
    link: Rc<Link>,
    /// netback's state for the vif, in XenStore.
    link_state: String,
}

impl Parked for XenParked {
    type Running = XenRunning;
    type Error = XenError;

    fn domain_id(&self) -> Option<u32> {
        Some(self.domain.domid())
    }

    fn boot(self, held: Vec<Vec<u8>>, trigger: Instant) -> XenRunning {
        let XenParked {
            mut domain,
            vif,
            console,
            link,
            link_state,
        } = self;
        let toolstack = domain.toolstack();
        toolstack.drain_watch();
        let watching = toolstack.watch(&link_state).is_ok();
        if let Err(e) = domain.unpause() {
            // The domain is broken; its end is reported as it is seen.
            tracing::error!(%e, "unpausing the domain");
        }
        let packets = vif.sent_by_guest();
        XenRunning {
            domain,
            packets: packets.into(),
            active_ns: clock::instant_ns(trigger).into(),
            vif,
            console,
            link,
            pending: Some(Pending {
                held,
                link_state,
                watching,
            }),
            trigger,
            handed_over: None,
            gave_up: false,
        }
    }
}

/// A booted guest whose link is not up yet.
struct Pending {
    /// What Synjitsu held until the boot.
    held: Vec<Vec<u8>>,
    link_state: String,
    watching: bool,
}

pub struct XenRunning {
    domain: Domain,
    vif: Vif,
    console: Option<ConsoleRelay>,
    link: Rc<Link>,
    pending: Option<Pending>,
    trigger: Instant,
    handed_over: Option<Instant>,
    /// Set when the guest missed [`LINK_DEADLINE`]: it counts as ended.
    gave_up: bool,
    /// How many frames the guest had sent when last looked at, and when
    /// that count last moved.
    packets: std::cell::Cell<u64>,
    active_ns: std::cell::Cell<u64>,
}

impl XenRunning {
    /// Ends the console relay, then the domain.
    fn finish(mut self, stopped: bool, how: Finish) -> Result<Report, XenError> {
        if let Some(console) = self.console.take() {
            console.finish(how);
        }
        self.unwatch_link();
        Ok(self.domain.finish(&mut std::io::sink(), stopped)?)
    }

    fn unwatch_link(&mut self) {
        if let Some(p) = self.pending.as_mut().filter(|p| p.watching) {
            let _ = self.domain.toolstack().unwatch(&p.link_state);
            p.watching = false;
        }
    }

    /// When the guest was last seen sending: now, if it sent a frame since
    /// the last look.
    fn sample(&self) -> u64 {
        let packets = self.vif.sent_by_guest();
        if packets != self.packets.get() {
            self.packets.set(packets);
            self.active_ns.set(clock::now_ns());
        }
        self.active_ns.get()
    }
}

impl Running for XenRunning {
    type Report = Report;
    type Error = XenError;

    fn domain_id(&self) -> Option<u32> {
        Some(self.domain.domid())
    }

    fn done_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.domain
            .watch()
            .expect("the domains' watch was set at parking")
    }

    fn has_ended(&mut self) -> bool {
        self.gave_up || self.domain.ended().unwrap_or(true)
    }

    fn link_pending(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.pending.as_ref().map(|_| self.done_fd())
    }

    fn link_up(&mut self) -> bool {
        let Some(pending) = &self.pending else {
            return true;
        };
        let toolstack = self.domain.toolstack();
        toolstack.drain_watch();
        if toolstack.read(&pending.link_state).as_deref() == Some(CONNECTED) {
            return true;
        }
        if self.trigger.elapsed() > LINK_DEADLINE && !self.gave_up {
            tracing::error!(
                domid = self.domain.domid(),
                "the guest's netfront never connected"
            );
            self.gave_up = true;
        }
        false
    }

    fn hand_over(&mut self, held: Vec<Vec<u8>>) -> Result<(), XenError> {
        let Some(mut pending) = self.pending.take() else {
            return Ok(());
        };
        pending.held.extend(held);
        if let Err(e) = self.link.to_guest(&self.vif, &pending.held) {
            // Tried again at the supervisor's next look (until the link
            // deadline): a frame sent twice is one TCP takes in its stride.
            let _ = self.link.to_stand_in();
            self.pending = Some(pending);
            return Err(e);
        }
        self.handed_over = Some(Instant::now());
        let _ = self.domain.toolstack().unwatch(&pending.link_state);
        Ok(())
    }

    fn last_activity_ns(&self) -> u64 {
        self.sample()
    }

    fn boot_latency(&self) -> Option<Duration> {
        self.handed_over
            .map(|at| at.saturating_duration_since(self.trigger))
    }

    fn stop(self) -> Result<Report, XenError> {
        self.link.to_stand_in()?;
        self.finish(true, Finish::Now)
    }

    fn stop_if_idle(mut self, idle_for: Duration) -> Result<IdleStop<Self>, XenError> {
        if let Err(e) = self.domain.pause() {
            // A guest that ended meanwhile cannot be paused: report its end.
            if self.has_ended() {
                return Ok(IdleStop::Stopped(self.finish(false, Finish::Drain)?));
            }
            return Err(e.into());
        }
        // From here frames wait for Synjitsu, whichever way this goes.
        self.link.to_stand_in()?;
        let idle = Duration::from_nanos(clock::now_ns().saturating_sub(self.sample()));
        if idle < idle_for {
            if self.pending.is_none() {
                self.link.to_guest(&self.vif, &[])?;
            }
            self.domain.unpause()?;
            return Ok(IdleStop::Busy(self));
        }
        Ok(IdleStop::Stopped(self.finish(true, Finish::Now)?))
    }

    fn wait(self) -> Result<Report, XenError> {
        if self.gave_up {
            let mut report = self.finish(true, Finish::Drain)?;
            report.outcome = crate::report::Outcome::Crashed {
                reason: "never connected its network (netfront) within a minute of its boot",
                registers: None,
            };
            return Ok(report);
        }
        self.finish(false, Finish::Drain)
    }
}
