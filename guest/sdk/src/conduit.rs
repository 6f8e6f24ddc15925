//! Conduit: named byte streams to other unikernels on the node, over
//! shared memory (vchans: `jitsu_vchan`, the same code the host tests).
//!
//! ```ignore
//! let mut conduit = Conduit::new(boot)?;
//! conduit.listen("counter")?;                  // accept under our name
//! let kv = conduit.connect("kv", "get")?;      // a stream to another
//! stack.run_with(&mut conduit, |sockets, conduit, now| {
//!     while let Some(s) = conduit.accept() { /* a client */ }
//!     let n = conduit.recv(kv, &mut buf)?;     // 0: nothing yet
//!     ...
//! })
//! ```
//!
//! A stream is usable once open: `connect` returns at once, and `recv`
//! says [`StreamError::Connecting`] until the listener's side took it (a
//! parked listener is booted for it meanwhile). Reads and writes never
//! block and never exit to the monitor: the event loop signals peers and
//! waits for theirs, all in its one exit per round.

use core::fmt;

use jitsu_abi::conduit as abi;
use jitsu_abi::ConduitEvent;
use jitsu_vchan::{layout, Endpoint, Peer, Role};

use crate::platform::conduit::Device;
use crate::Boot;

const SLOTS: usize = abi::SLOTS as usize;
/// After a stream moved data, the loop looks at the rings for this long
/// before it sleeps (see [`Conduit::set_spin`]): a peer that answers within
/// it is seen without an exit on either side (a sleeping reader asks to be
/// signalled; a spinning one does not, so its writer need not exit to
/// signal it). About what one sleep and wake-up cost here (an exit is some
/// 20 µs on nested KVM).
const SPIN_NS: u64 = 50_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConduitError {
    /// The monitor gave this guest no conduit device (no Conduit name).
    NoDevice,
    /// `listen` under a name that is not this guest's.
    NotOurName,
    /// A name or port that is not a DNS label, or ring orders no channel
    /// can have.
    Invalid,
    /// Every channel slot is taken.
    Busy,
}

impl fmt::Display for ConduitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConduitError::NoDevice => "no conduit device (the unikernel has no Conduit name)",
            ConduitError::NotOurName => "that is not this unikernel's Conduit name",
            ConduitError::Invalid => "not a Conduit name or port (a DNS label), or bad ring orders",
            ConduitError::Busy => "every conduit channel slot is taken",
        })
    }
}

/// Why a connect was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No unikernel on the node listens under the name.
    NoListener,
    /// The listener does not allow this unikernel (group, allow-list).
    NotAllowed,
    /// The listener has no free channel slot.
    Busy,
    /// The listener's monitor did not answer, or broke the protocol.
    Unreachable,
    Other(u32),
}

impl Refusal {
    fn of(reason: u32) -> Refusal {
        match reason {
            abi::REFUSED_NO_LISTENER => Refusal::NoListener,
            abi::REFUSED_NOT_ALLOWED => Refusal::NotAllowed,
            abi::REFUSED_BUSY => Refusal::Busy,
            abi::REFUSED_UNREACHABLE => Refusal::Unreachable,
            other => Refusal::Other(other),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoListener => f.write_str("no unikernel listens under that name"),
            Refusal::NotAllowed => f.write_str("the listener does not allow this unikernel"),
            Refusal::Busy => f.write_str("the listener has no free channel"),
            Refusal::Unreachable => f.write_str("the listener's monitor did not answer"),
            Refusal::Other(n) => write!(f, "refused ({n})"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamError {
    /// Not open yet: the listener's side has not taken it.
    Connecting,
    Refused(Refusal),
    /// The peer has gone, and everything it sent has been read.
    Closed,
    /// The peer broke the ring (its indices lie): the stream is unusable.
    Broken,
    /// The stream was closed here (the handle is an old one).
    Stale,
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::Connecting => f.write_str("still connecting"),
            StreamError::Refused(r) => write!(f, "refused: {r}"),
            StreamError::Closed => f.write_str("closed by the peer"),
            StreamError::Broken => f.write_str("the peer broke the channel"),
            StreamError::Stale => f.write_str("closed"),
        }
    }
}

/// A stream's handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    slot: u8,
    generation: u32,
}

/// What a wait found for Conduit.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ready {
    pub(crate) events: bool,
    /// Slots whose peers signalled (the signal is taken: the application
    /// must get a round to see why).
    pub(crate) signalled: u64,
}

#[derive(Clone, Copy)]
struct Label {
    bytes: [u8; 64],
    len: u8,
}

impl Label {
    const EMPTY: Label = Label {
        bytes: [0; 64],
        len: 0,
    };

    fn of(bytes: [u8; 64], len: u8) -> Label {
        Label {
            bytes,
            len: len.min(abi::LABEL_MAX as u8),
        }
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }
}

enum State {
    Free,
    Connecting,
    Open(Endpoint),
    Refused(Refusal),
    /// Closed here while connecting: closed for good once it opens.
    Abandoned,
}

struct Slot {
    generation: u32,
    state: State,
    peer: Label,
    port: Label,
    /// Bytes readable when the application last read (or was told of)
    /// them: only more than that is news worth not sleeping for.
    seen: usize,
    /// A write did not fit: more room is news.
    wants_space: bool,
}

pub struct Conduit {
    device: Device,
    slots: [Slot; SLOTS],
    /// Accepted streams not taken by `accept` yet.
    accepted: u64,
    /// Slots whose peers are due a signal (sent in the loop's next exit).
    signal: u64,
    /// Until when (`clock::now_nanos`) the loop spins before sleeping.
    spin_until: u64,
    spin_ns: u64,
}

impl Conduit {
    pub fn new(boot: &Boot) -> Result<Conduit, ConduitError> {
        let device = Device::open(boot).ok_or(ConduitError::NoDevice)?;
        Ok(Conduit {
            device,
            slots: core::array::from_fn(|_| Slot {
                generation: 0,
                state: State::Free,
                peer: Label::EMPTY,
                port: Label::EMPTY,
                seen: 0,
                wants_space: false,
            }),
            accepted: 0,
            signal: 0,
            spin_until: 0,
            spin_ns: SPIN_NS,
        })
    }

    /// How long the loop looks at the rings after traffic before it sleeps
    /// (50 µs unless set; 0: it always sleeps, and every message that finds
    /// its reader asleep costs a signal). Spinning trades a little CPU after
    /// each burst for round trips with no exit at all.
    pub fn set_spin(&mut self, spin: smoltcp::time::Duration) {
        self.spin_ns = spin.total_micros().saturating_mul(1000);
    }

    /// This unikernel's Conduit name, as its monitor was given it.
    pub fn name(&self) -> &'static str {
        self.device.name()
    }

    /// Accepts connections to `name`, this unikernel's Conduit name.
    pub fn listen(&mut self, name: &str) -> Result<(), ConduitError> {
        self.device.listen(name)
    }

    /// A stream to the unikernel named `name`, on `port`, with rings of
    /// 64 KiB each way.
    pub fn connect(&mut self, name: &str, port: &str) -> Result<Stream, ConduitError> {
        self.connect_with_orders(name, port, abi::DEFAULT_ORDER, abi::DEFAULT_ORDER)
    }

    /// As `connect`, asking for rings of 2^`out` bytes (what we send) and
    /// 2^`back` bytes (what we receive), each 10..=20.
    pub fn connect_with_orders(
        &mut self,
        name: &str,
        port: &str,
        out: u16,
        back: u16,
    ) -> Result<Stream, ConduitError> {
        let slot = self.device.connect(name, port, (out, back))? as usize;
        let entry = self.slots.get_mut(slot).ok_or(ConduitError::Invalid)?;
        entry.generation = entry.generation.wrapping_add(1);
        entry.state = State::Connecting;
        entry.peer = label(name);
        entry.port = label(port);
        entry.seen = 0;
        entry.wants_space = false;
        Ok(Stream {
            slot: slot as u8,
            generation: entry.generation,
        })
    }

    /// A stream a client opened to our name, if one waits.
    pub fn accept(&mut self) -> Option<Stream> {
        if self.accepted == 0 {
            return None;
        }
        let slot = self.accepted.trailing_zeros() as usize;
        self.accepted &= !(1 << slot);
        Some(Stream {
            slot: slot as u8,
            generation: self.slots[slot].generation,
        })
    }

    fn slot(&mut self, stream: Stream) -> Result<&mut Slot, StreamError> {
        let slot = &mut self.slots[stream.slot as usize % SLOTS];
        if slot.generation != stream.generation {
            return Err(StreamError::Stale);
        }
        Ok(slot)
    }

    /// Whether the stream is open (data may flow).
    pub fn is_open(&self, stream: Stream) -> bool {
        let slot = &self.slots[stream.slot as usize % SLOTS];
        slot.generation == stream.generation && matches!(slot.state, State::Open(_))
    }

    /// The other end's name.
    pub fn peer(&self, stream: Stream) -> &str {
        self.slots[stream.slot as usize % SLOTS].peer.as_str()
    }

    pub fn port(&self, stream: Stream) -> &str {
        self.slots[stream.slot as usize % SLOTS].port.as_str()
    }

    /// Reads what is there, up to `buf.len()` bytes; 0 when nothing is.
    pub fn recv(&mut self, stream: Stream, buf: &mut [u8]) -> Result<usize, StreamError> {
        let bit = 1u64 << stream.slot;
        let slot = self.slot(stream)?;
        let end = open(slot)?;
        let got = end.read(buf).map_err(broken)?;
        let left = end.readable().unwrap_or(0);
        if got.bytes == 0 && left == 0 && end.peer() == Peer::Gone {
            return Err(StreamError::Closed);
        }
        slot.seen = left;
        if got.notify {
            self.signal |= bit;
        }
        if got.bytes > 0 {
            self.spin_until = crate::clock::now_nanos() + self.spin_ns;
        }
        Ok(got.bytes)
    }

    /// Writes as much of `data` as fits; 0 when the ring is full (the loop
    /// wakes when the peer has read).
    pub fn send(&mut self, stream: Stream, data: &[u8]) -> Result<usize, StreamError> {
        let bit = 1u64 << stream.slot;
        let slot = self.slot(stream)?;
        let end = open(slot)?;
        let put = end.write(data).map_err(|e| match e {
            jitsu_vchan::Error::PeerGone => StreamError::Closed,
            _ => StreamError::Broken,
        })?;
        slot.wants_space = put.bytes < data.len();
        if put.notify {
            self.signal |= bit;
        }
        if put.bytes > 0 {
            self.spin_until = crate::clock::now_nanos() + self.spin_ns;
        }
        Ok(put.bytes)
    }

    /// Closes the stream: the peer sees its end once it has read the rest.
    pub fn close(&mut self, stream: Stream) {
        let index = stream.slot as usize % SLOTS;
        let Ok(slot) = self.slot(stream) else { return };
        match core::mem::replace(&mut slot.state, State::Free) {
            State::Open(end) => {
                self.signal &= !(1 << index);
                self.accepted &= !(1 << index);
                // The view of the slot goes before the slot leaves the window.
                hang_up(end);
                self.device.close(index as u32);
                slot_closed(&mut self.slots[index]);
            }
            State::Connecting => self.slots[index].state = State::Abandoned,
            State::Free | State::Refused(_) | State::Abandoned => {
                slot_closed(&mut self.slots[index]);
            }
        }
    }

    /// The signals due to peers (the loop's next exit sends them).
    pub(crate) fn take_signals(&mut self) -> u64 {
        core::mem::take(&mut self.signal)
    }

    pub(crate) fn has_signals(&self) -> bool {
        self.signal != 0
    }

    /// The loop's one wait: the signals due go out, then it blocks until
    /// input (frames, events, peers' signals) or the timeout.
    pub(crate) fn wait(&mut self, net: Option<&mut crate::net::NetDevice>, timeout_nanos: u64) {
        let signal = self.take_signals();
        let ready = crate::platform::conduit::wait(net, &mut self.device, signal, timeout_nanos);
        self.after_wait(ready);
    }

    /// Whether a stream moved data a moment ago: then the loop spins.
    pub(crate) fn spinning(&self) -> bool {
        self.spin_until > crate::clock::now_nanos()
    }

    /// Looks at the open streams, without asking their peers for
    /// anything, until something is new or the spin is over.
    pub(crate) fn spin(&mut self) -> bool {
        loop {
            if self.news(false) {
                return true;
            }
            if !self.spinning() {
                return false;
            }
            core::hint::spin_loop();
        }
    }

    /// Before the loop sleeps: asks every open stream's peer to signal news
    /// (then looks once more). Whether something is there already (then
    /// the loop must not sleep).
    pub(crate) fn prepare_wait(&mut self) -> bool {
        self.news(true)
    }

    /// Whether a stream has more to read than the application was told of,
    /// or room it wanted; with `ask`, the peers are asked to signal first.
    fn news(&mut self, ask: bool) -> bool {
        let mut news = false;
        for slot in self.slots.iter_mut() {
            let State::Open(end) = &slot.state else {
                continue;
            };
            let readable = match ask {
                true => end.await_data(),
                false => end.readable(),
            }
            .unwrap_or(0);
            // A peer that is gone has said so with a signal, which wakes us.
            if readable > slot.seen {
                news = true;
            }
            slot.seen = readable;
            if slot.wants_space {
                let room = match ask {
                    true => end.await_space(),
                    false => end.writable(),
                };
                if room.unwrap_or(0) > 0 {
                    slot.wants_space = false;
                    news = true;
                }
            }
        }
        news
    }

    /// After the loop waited: takes the events that came.
    pub(crate) fn after_wait(&mut self, ready: Ready) {
        if !ready.events {
            return;
        }
        let mut events = [ConduitEvent::default(); 8];
        loop {
            let n = self.device.events(&mut events);
            for event in &events[..n] {
                self.on_event(event);
            }
            if n < events.len() {
                return;
            }
        }
    }

    fn on_event(&mut self, event: &ConduitEvent) {
        let index = event.slot as usize;
        if index >= SLOTS {
            return;
        }
        match event.kind {
            abi::EVENT_ACCEPTED => {
                let slot = &mut self.slots[index];
                slot.generation = slot.generation.wrapping_add(1);
                slot.peer = Label::of(event.peer, event.peer_len);
                slot.port = Label::of(event.port, event.port_len);
                slot.seen = 0;
                slot.wants_space = false;
                match self.endpoint(index, event.size, Role::Server) {
                    Some(end) => {
                        self.slots[index].state = State::Open(end);
                        self.accepted |= 1 << index;
                    }
                    None => self.device.close(index as u32),
                }
            }
            abi::EVENT_CONNECTED => {
                let abandoned = matches!(self.slots[index].state, State::Abandoned);
                match self.endpoint(index, event.size, Role::Client) {
                    Some(end) if !abandoned => {
                        self.slots[index].state = State::Open(end);
                        // A client wakes its server once it is there, at
                        // once and on its own, as libxenvchan's does: a
                        // server may wait to see it come before it looks at
                        // the rings, and would take a signal for a first
                        // write sent together with it for that alone.
                        self.device.signal_now(index as u32);
                    }
                    Some(end) => {
                        hang_up(end);
                        self.device.close(index as u32);
                        slot_closed(&mut self.slots[index]);
                    }
                    None => {
                        self.device.close(index as u32);
                        self.slots[index].state = State::Refused(Refusal::Unreachable);
                    }
                }
            }
            abi::EVENT_REFUSED => {
                let slot = &mut self.slots[index];
                slot.state = match slot.state {
                    State::Abandoned => {
                        slot_closed(slot);
                        return;
                    }
                    _ => State::Refused(Refusal::of(event.reason)),
                };
            }
            _ => {}
        }
    }

    /// The channel in slot `index` (`size` bytes mapped), as `role`.
    fn endpoint(&self, index: usize, size: u32, role: Role) -> Option<Endpoint> {
        let memory = self.device.memory(index as u32, size)?;
        let parts = layout::region_of(&memory.part(0, layout::PAGE_SIZE)?)
            .ok()?
            .parts(&memory)
            .ok()?;
        match role {
            Role::Server => Endpoint::open_server(parts.ctrl, parts.left, parts.right),
            Role::Client => Endpoint::attach(parts.ctrl, parts.left, parts.right),
        }
        .ok()
    }

    /// Runs an event loop for a unikernel without a network: `app` is
    /// called each round and says how soon it wants to be called again.
    pub fn run(
        &mut self,
        mut app: impl FnMut(&mut Conduit, smoltcp::time::Instant) -> Option<smoltcp::time::Duration>,
    ) -> ! {
        loop {
            let wake = app(self, crate::clock::now());
            let news = self.spin_then_look(None);
            if news && !self.has_signals() {
                continue;
            }
            let timeout = match news {
                true => 0,
                false => wake.map_or(u64::MAX, |d| d.total_micros().saturating_mul(1000)),
            };
            self.wait(None, timeout);
        }
    }

    /// The part of a loop's round between the application and the sleep:
    /// signals due go out at once if the loop spins (then it looks at the
    /// rings a while), and the peers are asked to signal news. True when
    /// there is news already: no sleep, another round.
    pub(crate) fn spin_then_look(&mut self, net: Option<&mut crate::net::NetDevice>) -> bool {
        if self.spinning() {
            let signal = self.take_signals();
            if signal != 0 {
                let ready = crate::platform::conduit::wait(net, &mut self.device, signal, 0);
                self.after_wait(ready);
                // A peer's signal taken here (its end, say) is news.
                if ready.events || ready.signalled != 0 {
                    return true;
                }
            }
            if self.spin() {
                return true;
            }
        }
        self.prepare_wait()
    }
}

fn label(text: &str) -> Label {
    let mut bytes = [0u8; 64];
    let len = text.len().min(abi::LABEL_MAX);
    bytes[..len].copy_from_slice(&text.as_bytes()[..len]);
    Label::of(bytes, len as u8)
}

/// Marks our end gone; the endpoint (our only view of the slot) goes with it.
fn hang_up(mut end: Endpoint) {
    end.close();
}

fn slot_closed(slot: &mut Slot) {
    slot.state = State::Free;
    slot.generation = slot.generation.wrapping_add(1);
}

fn open(slot: &mut Slot) -> Result<&mut Endpoint, StreamError> {
    match &mut slot.state {
        State::Open(end) => Ok(end),
        State::Connecting => Err(StreamError::Connecting),
        State::Refused(r) => Err(StreamError::Refused(*r)),
        State::Free | State::Abandoned => Err(StreamError::Stale),
    }
}

fn broken(_: jitsu_vchan::Error) -> StreamError {
    StreamError::Broken
}
