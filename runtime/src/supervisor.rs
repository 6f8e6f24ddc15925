//! Lazy boot: a monitor that keeps its unikernel parked until a packet (or
//! a control command) asks for it, lets Synjitsu stand in while it is
//! parked or booting, and parks a fresh VM again after an idle timeout.
//!
//! All of it runs on the monitor's main thread, in one `poll` loop: the
//! backend's frame port (only while parked: Synjitsu reads it), the control
//! socket, the running guest's "done" fd, the signalfd and the idle
//! deadline. The guest itself runs wherever its backend runs it (see
//! [`crate::backend`]); nothing here names a hypervisor.

use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::os::fd::BorrowedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::Serialize;
use synjitsu::Synjitsu;
use thiserror::Error;

use crate::agent::RegistryAgent;
use crate::backend::{Backend, GuestReport, IdleStop, Parked, Running};
use crate::clock;
use crate::control::{Command, ControlServer};
use jitsu_registry::Service;

#[derive(Debug, Error)]
pub enum LazyError<E: std::error::Error + 'static> {
    #[error("control socket {path}: {source}")]
    Control {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Backend(E),
    #[error("waiting for events: {0}")]
    Poll(nix::Error),
}

/// The service as the network sees it: Synjitsu answers for it.
#[derive(Debug, Clone, Copy)]
pub struct ServiceAddress {
    pub mac: [u8; 6],
    pub ipv4: Ipv4Addr,
}

pub struct LazyConfig {
    pub address: ServiceAddress,
    /// Park again after this long without a frame either way.
    pub idle_timeout: Option<Duration>,
    /// The control socket, bound by the caller (before it gave up the
    /// right to create files); served once the first VM is parked.
    pub control: Option<ControlServer>,
    /// Hold packets that arrive before the guest runs (off: drop them, as a
    /// lazy start without Synjitsu would).
    pub hold: bool,
    /// Register the service in XenStore under this name.
    pub registry: Option<RegistryConfig>,
    /// The unikernel's Conduit broker: a connection to its name boots it.
    pub conduit: Option<jitsu_conduit::Broker>,
}

pub struct RegistryConfig {
    pub name: String,
    /// The XenStore daemon's socket.
    pub socket: PathBuf,
    /// Who registers it (written to `owner`).
    pub owner: String,
}

impl RegistryConfig {
    /// A monitor's `--name` and `--owner` (default: `pid:` and its pid).
    pub fn new(
        name: &str,
        owner: Option<&str>,
        socket: PathBuf,
    ) -> Result<RegistryConfig, InvalidServiceName> {
        if !jitsu_registry::valid_name(name) {
            return Err(InvalidServiceName(name.into()));
        }
        Ok(RegistryConfig {
            name: name.into(),
            socket,
            owner: owner.map_or_else(|| format!("pid:{}", std::process::id()), String::from),
        })
    }
}

#[derive(Debug, Error)]
#[error("--name {0:?}: a service name is a DNS label (a-z, 0-9, '-', at most 63)")]
pub struct InvalidServiceName(String);

/// Why the monitor stopped.
pub enum Ended<R> {
    /// A signal asked it to; the guest (if running) was stopped.
    Signal(i32),
    /// The guest ended by itself (halted or crashed).
    Guest(R),
}

enum State<B: Backend> {
    Parked(B::Parked),
    Running(B::Running),
}

/// Which event sources are ready after a wait.
struct Ready {
    signal: bool,
    frames: bool,
    done: bool,
    link: bool,
    boot_requested: bool,
    conduit_requested: bool,
    control: Vec<bool>,
}

/// What `status` reports.
#[derive(Debug, Serialize)]
pub struct Status {
    pub state: &'static str,
    pub boots: u64,
    pub last_boot_latency_us: Option<u64>,
    pub held_frames: u64,
    pub dropped_frames: u64,
    pub arp_replies: u64,
    /// Segments of connections to an earlier VM that Synjitsu reset.
    pub resets: u64,
    /// Console bytes dropped because nobody read the monitor's stdout.
    pub console_dropped_bytes: u64,
    /// Frames the guest sent with another's address, refused.
    pub refused_frames: u64,
    /// Which parking this is: 1 at the first, one more at each re-park.
    pub generation: u64,
    /// Boot requests through the registry that were for another parking.
    pub boot_requests_ignored: u64,
    pub last_packet_unix_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub hypervisor: &'static str,
    /// Xen's id of the domain standing for the service now.
    pub domid: Option<u32>,
    /// Conduit channels open now, and connections to the name refused.
    pub conduit_channels: Option<u32>,
    pub conduit_refused: Option<u64>,
}

pub struct Supervisor<B: Backend> {
    config: LazyConfig,
    backend: B,
    synjitsu: Synjitsu,
    state: Option<State<B>>,
    control: Option<ControlServer>,
    boots: u64,
    last_boot_latency: Option<Duration>,
    last_packet_ns: u64,
    agent: Option<RegistryAgent>,
    published: Option<(Service, Instant)>,
    /// Which parking this is (1 at the first): boot requests name it.
    generation: u64,
    /// Registry boot requests for another parking (or none), ignored.
    boot_requests_ignored: u64,
    /// One frame read while parked, kept for every wake-up; as long as the
    /// link's longest (a longer one could not reach the guest either).
    frame_buffer: Box<[u8]>,
}

/// A supervisor's errors, over backend `B`.
pub type Error<B> = LazyError<<B as Backend>::Error>;

impl<B: Backend> Supervisor<B> {
    /// Parks the first VM, then listens for commands and registers the
    /// service: whoever reaches either finds a parked VM.
    pub fn new(mut config: LazyConfig, backend: B) -> Result<Supervisor<B>, Error<B>> {
        let control = config.control.take();
        let mut synjitsu_config = synjitsu::Config::new(config.address.ipv4, config.address.mac);
        synjitsu_config.hold = config.hold;
        let frame_buffer = vec![0; backend.frames().max_frame()].into_boxed_slice();
        let mut supervisor = Supervisor {
            backend,
            synjitsu: Synjitsu::new(synjitsu_config),
            state: None,
            control: None,
            boots: 0,
            last_boot_latency: None,
            last_packet_ns: 0,
            agent: None,
            published: None,
            generation: 0,
            boot_requests_ignored: 0,
            frame_buffer,
            config,
        };
        supervisor.park()?;
        // Served only now: a client finds a parked VM.
        supervisor.control = control;
        if let Some(reg) = &supervisor.config.registry {
            let agent = RegistryAgent::start(reg.socket.clone(), supervisor.service()).map_err(
                |source| LazyError::Control {
                    path: reg.socket.display().to_string(),
                    source,
                },
            )?;
            supervisor.published = Some((supervisor.service(), Instant::now()));
            supervisor.agent = Some(agent);
        }
        Ok(supervisor)
    }

    fn park(&mut self) -> Result<(), Error<B>> {
        self.generation += 1;
        // Frames Synjitsu held for a guest stopped before it took its link
        // (and the trigger they set) are not the fresh VM's: a client
        // retransmits, and its SYN boots the fresh one.
        let stale = self.synjitsu.take_held();
        if !stale.is_empty() {
            tracing::debug!(
                frames = stale.len(),
                "dropped frames held for a stopped guest"
            );
        }
        let parked = self.backend.prepare().map_err(LazyError::Backend)?;
        // A Xen guest's Conduit name follows it to each fresh domain.
        if let (Some(conduit), Some(domid)) = (&self.config.conduit, parked.domain_id()) {
            conduit.move_to(domid);
        }
        self.state = Some(State::Parked(parked));
        give_back_freed_memory();
        Ok(())
    }

    /// Serves until a signal arrives on `signals` or the guest ends by itself.
    pub fn serve(&mut self, signals: BorrowedFd<'_>) -> Result<Ended<B::Report>, Error<B>> {
        loop {
            let ready = self.wait(signals)?;
            if ready.signal {
                return Ok(Ended::Signal(self.stop_for_signal(signals)));
            }
            if ready.frames {
                self.read_frames();
            }
            if ready.boot_requested {
                self.registry_boot();
            }
            if ready.conduit_requested {
                self.conduit_boot();
            }
            // A backend's done and link fds may be one (Xen's watch): on
            // either, look at both, since each look reads past the event.
            if ready.link || ready.done || self.link_pending() {
                if let Err(e) = self.hand_over_if_up() {
                    // The backend keeps the frames and tries again.
                    tracing::error!(%e, "handing the guest its link");
                }
                if let Some(report) = self.reap_if_ended()? {
                    return Ok(Ended::Guest(report));
                }
            }
            if !ready.control.is_empty() {
                self.serve_control(&ready.control)?;
            }
            if self.idle_deadline() == Some(Duration::ZERO) {
                if let Some(report) = self.park_if_idle()? {
                    return Ok(Ended::Guest(report));
                }
            }
            self.sync_registry();
        }
    }

    /// A boot asked for through the registry, if it is for this parking.
    fn registry_boot(&mut self) {
        let Some(requested) = self
            .agent
            .as_ref()
            .and_then(RegistryAgent::take_boot_request)
        else {
            return;
        };
        if !matches!(self.state, Some(State::Parked(_))) || requested != self.generation {
            self.boot_requests_ignored += 1;
            tracing::debug!(
                requested,
                generation = self.generation,
                "stale boot request"
            );
            return;
        }
        tracing::info!("boot requested through the registry");
        self.boot(Instant::now());
    }

    /// A Conduit connection (or request) for our name: boots a parked guest.
    /// Unlike a registry request it names no parking: the channel it made
    /// waits for whichever guest runs next.
    fn conduit_boot(&mut self) {
        let asked = self
            .config
            .conduit
            .as_ref()
            .is_some_and(jitsu_conduit::Broker::take_boot_request);
        if asked && matches!(self.state, Some(State::Parked(_))) {
            tracing::info!("boot requested through Conduit");
            self.boot(Instant::now());
        }
    }

    /// Waits for the next event; which sources are watched depends on the
    /// state. Frames are read while parked, and while a booted guest's link
    /// is not up yet (Synjitsu still stands in).
    fn wait<'a>(&'a self, signals: BorrowedFd<'a>) -> Result<Ready, Error<B>> {
        let mut fds = vec![PollFd::new(signals, PollFlags::POLLIN)];
        let mut watch = |fd: Option<BorrowedFd<'a>>| {
            fd.map(|fd| {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
                fds.len() - 1
            })
        };
        let running = match &self.state {
            Some(State::Running(vm)) => Some(vm),
            _ => None,
        };
        let standing_in = self.standing_in();
        let frames_at = watch(standing_in.then(|| self.backend.frames().fd()));
        let done_at = watch(running.map(|vm| vm.done_fd()));
        let link_at = watch(running.and_then(|vm| vm.link_pending()));
        let agent_at = watch(self.agent.as_ref().map(RegistryAgent::boot_fd));
        let conduit_at = watch(
            self.config
                .conduit
                .as_ref()
                .map(jitsu_conduit::Broker::boot_fd),
        );
        let control_from = fds.len();
        let control_fds = self
            .control
            .as_ref()
            .map(ControlServer::poll_fds)
            .unwrap_or_default();
        fds.extend(
            control_fds
                .iter()
                .map(|fd| PollFd::new(*fd, PollFlags::POLLIN)),
        );
        match poll(&mut fds, self.poll_timeout()) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(LazyError::Poll(e)),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        let is_ready = |at: Option<usize>| at.is_some_and(|i| ready[i]);
        Ok(Ready {
            signal: ready[0],
            frames: is_ready(frames_at),
            done: is_ready(done_at),
            link: is_ready(link_at),
            boot_requested: is_ready(agent_at),
            conduit_requested: is_ready(conduit_at),
            control: ready[control_from..].to_vec(),
        })
    }

    /// Whether Synjitsu reads the service's frames: while parked, and while
    /// a booted guest's own link is not up yet.
    fn standing_in(&self) -> bool {
        match &self.state {
            Some(State::Parked(_)) => true,
            Some(State::Running(vm)) => vm.link_pending().is_some(),
            None => false,
        }
    }

    fn link_pending(&self) -> bool {
        matches!(&self.state, Some(State::Running(vm)) if vm.link_pending().is_some())
    }

    /// Gives the guest its link once it is up, with what Synjitsu held
    /// since the boot.
    fn hand_over_if_up(&mut self) -> Result<(), Error<B>> {
        let Some(State::Running(vm)) = &mut self.state else {
            return Ok(());
        };
        if vm.link_pending().is_none() || !vm.link_up() {
            return Ok(());
        }
        let held = self.synjitsu.take_held();
        tracing::debug!(held = held.len(), "the guest's link is up: handing over");
        vm.hand_over(held).map_err(LazyError::Backend)
    }

    /// The report of a guest that has ended by itself, if it has.
    fn reap_if_ended(&mut self) -> Result<Option<B::Report>, Error<B>> {
        let Some(State::Running(vm)) = &mut self.state else {
            return Ok(None);
        };
        if !vm.has_ended() {
            return Ok(None);
        }
        let Some(State::Running(vm)) = self.state.take() else {
            return Ok(None);
        };
        Ok(Some(vm.wait().map_err(LazyError::Backend)?))
    }

    /// Until the guest's first exit (booting), and until the registry shows
    /// the state as it is, look often: the first exit happens on the vCPU
    /// thread, and nothing else would wake this loop to publish `running`.
    /// Otherwise wait for the idle deadline.
    fn poll_timeout(&self) -> PollTimeout {
        let booting =
            matches!(&self.state, Some(State::Running(vm)) if vm.boot_latency().is_none());
        let unpublished = self.agent.is_some()
            && self
                .published
                .as_ref()
                .is_none_or(|(service, _)| service.state != self.status().state);
        // A guest whose link comes up says so on its fd; a second is only
        // the backend's chance to give up on one that never does.
        if booting && self.standing_in() {
            return PollTimeout::from(1000u16);
        }
        if booting || unpublished {
            return PollTimeout::from(2u8);
        }
        self.idle_deadline().map_or(PollTimeout::NONE, |left| {
            PollTimeout::try_from(left.as_millis().min(60_000) as u64 + 1)
                .unwrap_or(PollTimeout::MAX)
        })
    }

    /// The registry entry as things stand.
    fn service(&self) -> Service {
        let status = self.status();
        let reg = self.config.registry.as_ref();
        Service {
            name: reg.map(|r| r.name.clone()).unwrap_or_default(),
            ip: Some(self.config.address.ipv4),
            state: status.state.to_string(),
            generation: self.generation,
            owner: reg.map(|r| r.owner.clone()).unwrap_or_default(),
            boots: status.boots,
            last_boot_us: status.last_boot_latency_us,
            last_packet_ms: status.last_packet_unix_ms,
            held_frames: status.held_frames,
            dropped_frames: status.dropped_frames,
            refused_frames: status.refused_frames,
            hypervisor: status.hypervisor.into(),
            domid: status.domid,
        }
    }

    /// Publishes state changes at once, and packet times and frame counts
    /// at most once a second (a storm must not become a storm of writes).
    fn sync_registry(&mut self) {
        let Some(agent) = &self.agent else { return };
        let now = self.service();
        let due = match &self.published {
            None => true,
            Some((old, at)) => {
                let mut old_but_counts = old.clone();
                old_but_counts.last_packet_ms = now.last_packet_ms;
                old_but_counts.held_frames = now.held_frames;
                old_but_counts.dropped_frames = now.dropped_frames;
                old_but_counts.refused_frames = now.refused_frames;
                old_but_counts != now || (*old != now && at.elapsed() >= Duration::from_secs(1))
            }
        };
        if due {
            agent.publish(now.clone());
            self.published = Some((now, Instant::now()));
        }
    }

    /// Time left before the running guest counts as idle.
    fn idle_deadline(&self) -> Option<Duration> {
        let (Some(State::Running(vm)), Some(timeout)) = (&self.state, self.config.idle_timeout)
        else {
            return None;
        };
        let idle = Duration::from_nanos(clock::now_ns().saturating_sub(vm.last_activity_ns()));
        Some(timeout.saturating_sub(idle))
    }

    /// Feeds waiting frames to Synjitsu; boots at the first trigger and
    /// leaves the rest on the link for the guest.
    fn read_frames(&mut self) {
        loop {
            let n = match self.backend.frames().recv(&mut self.frame_buffer) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(%e, "reading the service's frames");
                    return;
                }
            };
            let received = Instant::now();
            self.last_packet_ns = clock::instant_ns(received);
            let verdict = self.synjitsu.on_frame(&self.frame_buffer[..n]);
            if let synjitsu::Action::Reply(reply) = &verdict.action {
                let _ = self.backend.frames().send(reply);
            }
            // While a booted guest's link comes up, Synjitsu only holds.
            if verdict.boot && matches!(self.state, Some(State::Parked(_))) {
                self.boot(received);
                return;
            }
        }
    }

    fn boot(&mut self, trigger: Instant) {
        if let Some(State::Parked(vm)) = self.state.take() {
            self.boots += 1;
            let held = self.synjitsu.take_held();
            tracing::debug!(held = held.len(), "booting");
            self.state = Some(State::Running(vm.boot(held, trigger)));
            // A guest parked with its link up takes its frames at once.
            if let Err(e) = self.hand_over_if_up() {
                tracing::error!(%e, "handing the guest its link");
            }
        } else {
            unreachable_state();
        }
    }

    /// Idle as far as the supervisor can see: stops the guest unless its
    /// vCPU thread saw a frame meanwhile, and parks a fresh VM. Returns the
    /// report of a guest that had ended by itself instead.
    fn park_if_idle(&mut self) -> Result<Option<B::Report>, Error<B>> {
        let Some(timeout) = self.config.idle_timeout else {
            return Ok(None);
        };
        let vm = match self.state.take() {
            Some(State::Running(vm)) => vm,
            other => {
                self.state = other;
                return Ok(None);
            }
        };
        self.remember(&vm);
        match vm.stop_if_idle(timeout).map_err(LazyError::Backend)? {
            IdleStop::Busy(vm) => {
                tracing::debug!("idle stop declined: a frame moved meanwhile");
                self.state = Some(State::Running(vm));
                Ok(None)
            }
            IdleStop::Stopped(report) if report.was_stopped() => {
                tracing::info!("idle: parked a fresh VM");
                self.park()?;
                Ok(None)
            }
            IdleStop::Stopped(report) => Ok(Some(report)),
        }
    }

    /// What the status keeps reporting of a VM once it is gone.
    fn remember(&mut self, vm: &B::Running) {
        self.last_boot_latency = vm.boot_latency().or(self.last_boot_latency);
        self.last_packet_ns = self.last_packet_ns.max(vm.last_activity_ns());
    }

    /// Stops the running guest and parks a fresh VM in its place.
    fn repark(&mut self) -> Result<(), Error<B>> {
        if let Some(State::Running(vm)) = self.state.take() {
            self.remember(&vm);
            let report = vm.stop().map_err(LazyError::Backend)?;
            tracing::debug!(report = ?report.describe(), "guest stopped");
        }
        self.park()
    }

    fn stop_for_signal(&mut self, signals: BorrowedFd<'_>) -> i32 {
        let mut info = [0u8; 128];
        let signo = nix::unistd::read(signals, &mut info)
            .ok()
            .filter(|&n| n >= 4)
            .map_or(libc::SIGTERM, |_| {
                u32::from_ne_bytes([info[0], info[1], info[2], info[3]]) as i32
            });
        if let Some(State::Running(vm)) = self.state.take() {
            let _ = vm.stop();
        }
        self.state = None; // a parked VM is cancelled on drop
        signo
    }

    fn serve_control(&mut self, ready: &[bool]) -> Result<(), Error<B>> {
        let Some(mut control) = self.control.take() else {
            return Ok(());
        };
        let mut failure = None;
        control.service(ready, |command| match command {
            None => r#"{"error":"unknown command (boot, stop, status)"}"#.into(),
            Some(command) => {
                if let Err(e) = self.command(command) {
                    let text = serde_json::json!({ "error": e.to_string() }).to_string();
                    failure = Some(e);
                    return text;
                }
                serde_json::to_string(&self.status()).unwrap_or_default()
            }
        });
        self.control = Some(control);
        failure.map_or(Ok(()), Err)
    }

    fn command(&mut self, command: Command) -> Result<(), Error<B>> {
        match (command, &self.state) {
            (Command::Boot, Some(State::Parked(_))) => self.boot(Instant::now()),
            (Command::Stop, Some(State::Running(_))) => self.repark()?,
            _ => {}
        }
        Ok(())
    }

    pub fn status(&self) -> Status {
        let stats = self.synjitsu.stats();
        let (state, latency) = match &self.state {
            Some(State::Parked(_)) | None => ("parked", self.last_boot_latency),
            Some(State::Running(vm)) => match vm.boot_latency() {
                Some(l) => ("running", Some(l)),
                None => ("booting", self.last_boot_latency),
            },
        };
        let last_packet = match &self.state {
            Some(State::Running(vm)) => vm.last_activity_ns().max(self.last_packet_ns),
            _ => self.last_packet_ns,
        };
        Status {
            state,
            boots: self.boots,
            last_boot_latency_us: latency.map(|d| d.as_micros() as u64),
            held_frames: stats.held,
            dropped_frames: stats.dropped(),
            arp_replies: stats.arp_replies,
            resets: stats.resets,
            console_dropped_bytes: self.backend.console_dropped_bytes(),
            refused_frames: self.backend.frames_refused(),
            generation: self.generation,
            boot_requests_ignored: self.boot_requests_ignored,
            last_packet_unix_ms: (last_packet != 0).then(|| clock::unix_ms(last_packet)),
            idle_timeout_ms: self.config.idle_timeout.map(|d| d.as_millis() as u64),
            hypervisor: self.backend.hypervisor(),
            domid: match &self.state {
                Some(State::Parked(vm)) => vm.domain_id(),
                Some(State::Running(vm)) => vm.domain_id(),
                None => None,
            },
            conduit_channels: self
                .config
                .conduit
                .as_ref()
                .map(jitsu_conduit::Broker::open_channels),
            conduit_refused: self
                .config
                .conduit
                .as_ref()
                .map(jitsu_conduit::Broker::refused),
        }
    }
}

/// Returns to the kernel the heap pages that building a VM used and freed
/// (the ELF's parse, the seccomp filter's compile, the previous VM): a
/// parked service may wait for hours, and should not keep them resident.
fn give_back_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of glibc's own heap.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cold]
fn unreachable_state() {
    tracing::error!("boot asked for while not parked");
}
