//! Synjitsu: stands in for a unikernel that is not running yet.
//!
//! While the service is parked (or still booting) the monitor feeds every
//! frame from the service's TAP to [`Synjitsu::on_frame`]: ARP requests for
//! the service address are answered with the guest's MAC, so clients never
//! wait on ARP; the first IPv4 packet for the service asks for a boot; every
//! IPv4 packet for it is held, in order, in a bounded queue (oldest dropped
//! first), with retransmitted SYNs recognised and not held twice. At boot the
//! monitor hands the guest [`Synjitsu::take_held`] before anything else, so
//! the guest answers the client's original SYN and the client sees one
//! ordinary handshake. A TCP segment of a connection to an earlier VM (a
//! keep-alive pool, an ingress controller) is answered with a reset built
//! from the segment alone, so the client reconnects at once and its new SYN
//! boots the service. Everything else is counted and dropped.
//!
//! This crate does no I/O: it decides, the monitor moves the bytes.

pub mod frame;

use std::collections::{HashSet, VecDeque};
use std::net::Ipv4Addr;

use frame::{
    Endpoint, Mac, ARP_REPLY, ARP_REQUEST, ETHERTYPE_ARP, ETHERTYPE_IPV4, IPPROTO_TCP, TCP_ACK,
    TCP_RST, TCP_SYN,
};

#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub service_ip: Ipv4Addr,
    pub service_mac: Mac,
    /// Most frames held at once.
    pub max_frames: usize,
    /// Most bytes held at once.
    pub max_bytes: usize,
    /// Hold packets for the guest. Off, the trigger still boots the guest
    /// but the packet is dropped (what a plain lazy start would do).
    pub hold: bool,
}

impl Config {
    pub fn new(service_ip: Ipv4Addr, service_mac: Mac) -> Config {
        Config {
            service_ip,
            service_mac,
            max_frames: 256,
            max_bytes: 256 * 1024,
            hold: true,
        }
    }
}

/// Counters, cumulative over the monitor's life.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub arp_replies: u64,
    /// Segments of connections to an earlier VM, answered with a reset.
    pub resets: u64,
    pub held: u64,
    pub triggers: u64,
    pub dropped_overflow: u64,
    pub dropped_duplicate_syn: u64,
    pub dropped_not_for_service: u64,
    pub dropped_malformed: u64,
    pub dropped_not_held: u64,
    /// Resets of connections from before the service was parked (a reset
    /// is never answered).
    pub dropped_stale: u64,
}

impl Stats {
    pub fn dropped(&self) -> u64 {
        self.dropped_overflow
            + self.dropped_duplicate_syn
            + self.dropped_not_for_service
            + self.dropped_malformed
            + self.dropped_not_held
            + self.dropped_stale
    }
}

/// What to do with one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this frame back out of the TAP.
    Reply(Vec<u8>),
    Held,
    Dropped(Drop),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    Malformed,
    NotForService,
    DuplicateSyn,
    NotHeld,
    /// A reset of a connection the parked guest never had: it neither
    /// boots the guest nor is held (other segments of such connections are
    /// answered with a reset of ours).
    Stale,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    /// This frame is the first for the service since it was parked: boot it.
    pub boot: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SynKey {
    src: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    seq: u32,
}

pub struct Synjitsu {
    config: Config,
    queue: VecDeque<(Vec<u8>, Option<SynKey>)>,
    bytes: usize,
    syns: HashSet<SynKey>,
    /// Whom the held frames came from, to introduce them to the guest.
    clients: Vec<(Mac, Ipv4Addr)>,
    triggered: bool,
    stats: Stats,
}

impl Synjitsu {
    pub fn new(config: Config) -> Synjitsu {
        Synjitsu {
            config,
            queue: VecDeque::new(),
            bytes: 0,
            syns: HashSet::new(),
            clients: Vec::new(),
            triggered: false,
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Frames held right now.
    pub fn held_now(&self) -> usize {
        self.queue.len()
    }

    pub fn on_frame(&mut self, frame: &[u8]) -> Verdict {
        let action = self.classify(frame);
        let boot = matches!(
            action,
            Action::Held | Action::Dropped(Drop::NotHeld) | Action::Dropped(Drop::DuplicateSyn)
        ) && !self.triggered;
        if boot {
            self.triggered = true;
            self.stats.triggers += 1;
        }
        Verdict { action, boot }
    }

    fn classify(&mut self, frame: &[u8]) -> Action {
        let Some(eth) = frame::ethernet(frame) else {
            self.stats.dropped_malformed += 1;
            return Action::Dropped(Drop::Malformed);
        };
        match eth.ethertype {
            ETHERTYPE_ARP => self.on_arp(eth.payload),
            ETHERTYPE_IPV4 => self.on_ipv4(frame, eth.src, eth.payload),
            _ => {
                self.stats.dropped_not_for_service += 1;
                Action::Dropped(Drop::NotForService)
            }
        }
    }

    fn on_arp(&mut self, payload: &[u8]) -> Action {
        let Some(arp) = frame::arp(payload) else {
            self.stats.dropped_malformed += 1;
            return Action::Dropped(Drop::Malformed);
        };
        // The guest's own gratuitous ARP (a Xen guest's netfront sends one
        // as it connects, while Synjitsu may still stand in) asks nobody.
        let from_the_guest = arp.sender_mac == self.config.service_mac;
        if arp.op != ARP_REQUEST || arp.target_ip != self.config.service_ip || from_the_guest {
            self.stats.dropped_not_for_service += 1;
            return Action::Dropped(Drop::NotForService);
        }
        self.stats.arp_replies += 1;
        let me = (self.config.service_mac, self.config.service_ip);
        let them = (arp.sender_mac, arp.sender_ip);
        Action::Reply(frame::build_arp(ARP_REPLY, me, them, arp.sender_mac))
    }

    fn on_ipv4(&mut self, frame: &[u8], src_mac: Mac, payload: &[u8]) -> Action {
        let Some(ip) = frame::ipv4(payload) else {
            self.stats.dropped_malformed += 1;
            return Action::Dropped(Drop::Malformed);
        };
        if ip.dst != self.config.service_ip {
            self.stats.dropped_not_for_service += 1;
            return Action::Dropped(Drop::NotForService);
        }
        let tcp = (ip.protocol == IPPROTO_TCP)
            .then(|| frame::tcp(ip.payload))
            .flatten();
        // Only a SYN opens a connection; anything else of TCP belongs to one
        // the parked guest does not have.
        if let Some(segment) = tcp.filter(|t| t.flags & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN) {
            return self.reset(src_mac, &ip, &segment);
        }
        let syn = tcp.map(|t| SynKey {
            src: ip.src,
            src_port: t.src_port,
            dst_port: t.dst_port,
            seq: t.seq,
        });
        if let Some(key) = syn {
            if self.syns.contains(&key) {
                self.stats.dropped_duplicate_syn += 1;
                return Action::Dropped(Drop::DuplicateSyn);
            }
        }
        if !self.config.hold {
            self.stats.dropped_not_held += 1;
            return Action::Dropped(Drop::NotHeld);
        }
        if !self.clients.iter().any(|c| c.1 == ip.src) && self.clients.len() < 16 {
            self.clients.push((src_mac, ip.src));
        }
        self.hold(frame.to_vec(), syn);
        Action::Held
    }

    /// Answers a segment of a connection to an earlier VM with a reset, so
    /// the client need not wait for its TCP to give up. A reset itself is
    /// dropped: answering it could make two stateless hosts ping-pong.
    fn reset(&mut self, src_mac: Mac, ip: &frame::Ipv4<'_>, segment: &frame::Tcp) -> Action {
        if segment.flags & TCP_RST != 0 {
            self.stats.dropped_stale += 1;
            return Action::Dropped(Drop::Stale);
        }
        let me = Endpoint {
            mac: self.config.service_mac,
            ip: self.config.service_ip,
            port: segment.dst_port,
        };
        let them = Endpoint {
            mac: src_mac,
            ip: ip.src,
            port: segment.src_port,
        };
        self.stats.resets += 1;
        Action::Reply(frame::build_tcp_reset(me, them, segment))
    }

    fn hold(&mut self, frame: Vec<u8>, syn: Option<SynKey>) {
        self.bytes += frame.len();
        if let Some(key) = syn {
            self.syns.insert(key);
        }
        self.queue.push_back((frame, syn));
        self.stats.held += 1;
        while self.queue.len() > self.config.max_frames || self.bytes > self.config.max_bytes {
            let Some((old, key)) = self.queue.pop_front() else {
                break;
            };
            self.bytes -= old.len();
            if let Some(key) = key {
                // A retransmission of a dropped SYN may be held again.
                self.syns.remove(&key);
            }
            self.stats.dropped_overflow += 1;
        }
    }

    /// The frames for the guest's first read, in order: for each client, an
    /// ARP request from it (so the guest knows its MAC and can answer at once
    /// instead of asking first), then everything held. Resets for the next
    /// parking.
    pub fn take_held(&mut self) -> Vec<Vec<u8>> {
        let me = (self.config.service_mac, self.config.service_ip);
        let mut out: Vec<Vec<u8>> = self
            .clients
            .drain(..)
            .map(|client| frame::build_arp(ARP_REQUEST, client, (me.0, me.1), me.0))
            .collect();
        out.extend(self.queue.drain(..).map(|(f, _)| f));
        self.bytes = 0;
        self.syns.clear();
        self.triggered = false;
        out
    }
}

#[cfg(test)]
mod tests;
