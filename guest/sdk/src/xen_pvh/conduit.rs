//! Conduit between Xen domains: the guest does Conduit's rendezvous itself,
//! through its own XenStore connection, and a channel is pages and an
//! interdomain event channel, laid out as Xen's libxenvchan lays them out,
//! so that dom0's libxenvchan programs talk to it too.
//!
//! - **Listening** under its name (which its monitor registered as
//!   `/conduit/<name>` = our domid, and watches to boot us): each request
//!   filed below it (`<client>/<port>` = the client's domid) is taken (the
//!   node removed, so the same client may ask again), a channel is laid out
//!   in our own pages, granted to the client with an unbound event channel,
//!   and published under `data/vchan/<client domid>/<port>/` (`ring-ref`,
//!   `event-channel`, readable by the client alone).
//! - **Connecting**: file the request under the listener's name, wait for
//!   its metadata, map its pages into the window above RAM (no RAM is
//!   behind those frames), bind to its event channel.
//! - A peer whose domain is gone (`@releaseDomain`, then its home missing)
//!   is marked gone in the control page, as a monitor does on KVM.

use jitsu_abi::conduit as abi;
use jitsu_abi::ConduitEvent;
use jitsu_vchan::{layout, Endpoint, Region, Role, Shared};

use super::net::NetDevice;
use super::{events, grant, xenstore};
use crate::conduit::{ConduitError, Ready};
use crate::{heap, xs_path, Boot};

/// Where peers' pages are mapped: frames above the RAM of any domain that
/// has less than 3 GiB, and below the special pages under 4 GiB (the start
/// code identity-maps the whole of the first 4 GiB).
const WINDOW: u64 = 0xc000_0000;
const SLOT_SIZE: u64 = abi::SLOT_SIZE;
const SLOTS: usize = abi::SLOTS as usize;
/// Rings of at most 64 KiB here: a channel is at most 33 pages.
const MAX_ORDER: u16 = 16;
const MAX_PAGES: usize = 1 + 2 * (1 << (MAX_ORDER - 12));
/// The orders a listener lays out, whatever a client wished (it cannot
/// say, in Conduit's rendezvous).
const SERVED_ORDERS: (u16, u16) = (MAX_ORDER, MAX_ORDER);
const CONNECT_NANOS: u64 = 10_000_000_000;
/// While a connect waits, the store is looked at at least this often (a
/// watch event that came during another request is counted, not kept).
const RESCAN_NANOS: u64 = 20_000_000;

#[derive(Clone, Copy)]
struct Label {
    bytes: [u8; 64],
    len: u8,
}

impl Label {
    fn of(text: &str) -> Label {
        let mut bytes = [0u8; 64];
        let len = text.len().min(abi::LABEL_MAX);
        bytes[..len].copy_from_slice(&text.as_bytes()[..len]);
        Label {
            bytes,
            len: len as u8,
        }
    }

    fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }
}

/// Pages of our own for channels we serve: a run of the heap, reached only
/// by address (the peer writes them at any moment).
#[derive(Clone, Copy)]
struct Pages {
    addr: u64,
    len: usize,
}

enum Slot {
    Free,
    /// We serve it, from our own pages.
    Serving {
        peer_domid: u16,
        port: Label,
        evtchn: u32,
        pages: Pages,
        grefs: [u32; MAX_PAGES],
        count: usize,
    },
    /// We asked for it; the listener has not published it yet.
    Asking {
        peer: Label,
        peer_domid: u16,
        port: Label,
        deadline: u64,
    },
    /// We asked for it, and its pages are mapped in the window.
    Mapped {
        peer: Label,
        peer_domid: u16,
        port: Label,
        evtchn: u32,
        handles: [u32; MAX_PAGES],
        count: usize,
        size: u32,
    },
}

pub(crate) struct Device {
    name: &'static str,
    domid: u16,
    listening: bool,
    slots: [Slot; SLOTS],
    /// Pages of each slot's last served channel, kept for the next (the
    /// heap never frees), unless the peer kept them mapped.
    spare: [Option<Pages>; SLOTS],
    events: [ConduitEvent; 16],
    queued: usize,
    watching_releases: bool,
}

impl Device {
    pub(crate) fn open(_boot: &Boot) -> Option<Device> {
        let mut buf = [0u8; 80];
        let name = xenstore::read("jitsu/conduit", &mut buf).ok()?;
        if !jitsu_vchan::rendezvous::valid_label(name) {
            return None;
        }
        let stored = heap::bytes(name.len())?;
        stored.copy_from_slice(name.as_bytes());
        let name = core::str::from_utf8(stored).ok()?;
        let mut buf = [0u8; 16];
        let domid = xenstore::read("domid", &mut buf).ok()?.parse().ok()?;
        Some(Device {
            name,
            domid,
            listening: false,
            slots: core::array::from_fn(|_| Slot::Free),
            spare: core::array::from_fn(|_| None),
            events: [ConduitEvent::default(); 16],
            queued: 0,
            watching_releases: false,
        })
    }

    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    pub(crate) fn listen(&mut self, name: &str) -> Result<(), ConduitError> {
        if name != self.name {
            return Err(ConduitError::NotOurName);
        }
        xenstore::watch(xs_path!("/conduit/{name}").as_str(), "conduit")
            .map_err(|_| ConduitError::NoDevice)?;
        self.listening = true;
        self.watch_releases();
        self.take_requests();
        Ok(())
    }

    pub(crate) fn connect(
        &mut self,
        name: &str,
        port: &str,
        _orders: (u16, u16),
    ) -> Result<u32, ConduitError> {
        let valid = jitsu_vchan::rendezvous::valid_label;
        if !valid(name) || !valid(port) {
            return Err(ConduitError::Invalid);
        }
        let slot = self.free_slot().ok_or(ConduitError::Busy)?;
        self.watch_releases();
        let mut buf = [0u8; 16];
        let listener = xenstore::read(xs_path!("/conduit/{name}").as_str(), &mut buf)
            .ok()
            .and_then(|d| d.parse::<u16>().ok());
        let Some(peer_domid) = listener else {
            self.push(refusal(slot, abi::REFUSED_NO_LISTENER));
            return Ok(slot as u32);
        };
        let mut me = xenstore::Text::<8>::new();
        let _ = core::fmt::Write::write_fmt(&mut me, format_args!("{}", self.domid));
        let request = xs_path!("/conduit/{name}/{}/{port}", self.name);
        let metadata = metadata_path(peer_domid, self.domid, port);
        let filed = xenstore::write(request.as_str(), me.as_str())
            .and_then(|()| xenstore::watch(metadata.as_str(), "conduit"));
        if filed.is_err() {
            self.push(refusal(slot, abi::REFUSED_UNREACHABLE));
            return Ok(slot as u32);
        }
        self.slots[slot] = Slot::Asking {
            peer: Label::of(name),
            peer_domid,
            port: Label::of(port),
            deadline: events::system_time_nanos() + CONNECT_NANOS,
        };
        Ok(slot as u32)
    }

    pub(crate) fn events(&mut self, out: &mut [ConduitEvent]) -> usize {
        let n = out.len().min(self.queued);
        out[..n].copy_from_slice(&self.events[..n]);
        self.events.copy_within(n..self.queued, 0);
        self.queued -= n;
        n
    }

    /// Signals `slot`'s peer now.
    pub(crate) fn signal_now(&mut self, slot: u32) {
        if let Some(evtchn) = self.event_channel(slot as usize) {
            events::notify(evtchn);
        }
    }

    pub(crate) fn close(&mut self, slot: u32) {
        let index = slot as usize;
        let Some(entry) = self.slots.get_mut(index) else {
            return;
        };
        match core::mem::replace(entry, Slot::Free) {
            Slot::Serving {
                peer_domid,
                port,
                evtchn,
                pages,
                grefs,
                count,
                ..
            } => {
                events::notify(evtchn);
                // Pages the peer still maps are never used again.
                let all_back = grefs[..count].iter().all(|&g| grant::revoke(g));
                if all_back {
                    self.spare[index] = Some(pages);
                }
                events::close(evtchn);
                let _ = xenstore::rm(metadata_path(self.domid, peer_domid, port.as_str()).as_str());
            }
            Slot::Mapped {
                peer,
                port,
                evtchn,
                handles,
                count,
                ..
            } => {
                events::notify(evtchn);
                for (i, &handle) in handles[..count].iter().enumerate() {
                    grant::unmap(slot_base(index) + i as u64 * 4096, handle);
                }
                events::close(evtchn);
                withdraw(peer.as_str(), self.name, port.as_str());
            }
            Slot::Asking { peer, port, .. } => withdraw(peer.as_str(), self.name, port.as_str()),
            Slot::Free => {}
        }
    }

    pub(crate) fn memory(&self, slot: u32, size: u32) -> Option<Shared> {
        let base = match self.slots.get(slot as usize)? {
            Slot::Serving { pages, .. } if size as usize <= pages.len => pages.addr,
            Slot::Mapped { size: mapped, .. } if size <= *mapped => slot_base(slot as usize),
            _ => return None,
        };
        // SAFETY: our own pages (kept by the slot until it is closed) or the
        // peer's, mapped in the window until it is; the SDK drops every view
        // of them before it closes the slot, and makes no Rust reference.
        unsafe { Shared::new(base as *mut u8, size as usize) }
    }

    fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(|s| matches!(s, Slot::Free))
    }

    fn push(&mut self, event: ConduitEvent) {
        if self.queued < self.events.len() {
            self.events[self.queued] = event;
            self.queued += 1;
        }
    }

    fn watch_releases(&mut self) {
        if !self.watching_releases {
            self.watching_releases = xenstore::watch("@releaseDomain", "conduit").is_ok();
        }
    }

    fn event_channel(&self, index: usize) -> Option<u32> {
        match &self.slots[index] {
            Slot::Serving { evtchn, .. } | Slot::Mapped { evtchn, .. } => Some(*evtchn),
            _ => None,
        }
    }

    /// After the store said something (or a while): new requests, answers
    /// to ours, peers that are gone.
    fn look_at_the_store(&mut self) {
        if self.listening {
            self.take_requests();
        }
        let now = events::system_time_nanos();
        for index in 0..SLOTS {
            if let Slot::Asking { deadline, .. } = self.slots[index] {
                if !self.try_map(index) && now > deadline {
                    self.fail_asking(index);
                }
            }
        }
        self.mark_departed_peers();
    }

    fn asking(&self) -> bool {
        self.slots.iter().any(|s| matches!(s, Slot::Asking { .. }))
    }

    /// Takes every request filed under our name.
    fn take_requests(&mut self) {
        let mut clients = [0u8; 1024];
        let listed = xs_path!("/conduit/{}", self.name);
        let Ok(names) = xenstore::directory(listed.as_str(), &mut clients) else {
            return;
        };
        let mut found: [Option<Label>; 16] = [None; 16];
        for (slot, client) in found.iter_mut().zip(names) {
            *slot = Some(Label::of(client));
        }
        for client in found.into_iter().flatten() {
            let mut ports = [0u8; 1024];
            let folder = xs_path!("/conduit/{}/{}", self.name, client.as_str());
            let Ok(names) = xenstore::directory(folder.as_str(), &mut ports) else {
                continue;
            };
            let mut wanted: [Option<Label>; 16] = [None; 16];
            for (slot, port) in wanted.iter_mut().zip(names) {
                *slot = Some(Label::of(port));
            }
            for port in wanted.into_iter().flatten() {
                self.take_request(&client, &port);
            }
        }
    }

    fn take_request(&mut self, client: &Label, port: &Label) {
        let request = xs_path!(
            "/conduit/{}/{}/{}",
            self.name,
            client.as_str(),
            port.as_str()
        );
        let mut buf = [0u8; 16];
        let filed = xenstore::read(request.as_str(), &mut buf)
            .ok()
            .and_then(|d| d.parse::<u16>().ok());
        // Taken: the same client may file the same request again later.
        let _ = xenstore::rm(request.as_str());
        let valid = jitsu_vchan::rendezvous::valid_label;
        let (Some(peer_domid), true) = (filed, valid(client.as_str()) && valid(port.as_str()))
        else {
            return;
        };
        let Some(index) = self.free_slot() else {
            return;
        };
        match self.serve(index, peer_domid, *port) {
            Ok(size) => self.push(ConduitEvent {
                slot: index as u32,
                kind: abi::EVENT_ACCEPTED,
                size,
                peer_len: client.len,
                port_len: port.len,
                peer: client.bytes,
                port: port.bytes,
                ..ConduitEvent::default()
            }),
            Err(why) => crate::println!("conduit: serving {}: {why}", client.as_str()),
        }
    }

    /// Lays a channel out in our pages for `peer_domid`, grants it and
    /// publishes it; its size.
    fn serve(&mut self, index: usize, peer_domid: u16, port: Label) -> Result<u32, &'static str> {
        let region = Region::of(SERVED_ORDERS.0, SERVED_ORDERS.1).map_err(|_| "ring orders")?;
        let pages = match self.spare[index].take() {
            Some(pages) if pages.len >= region.len => pages,
            _ => {
                let run = heap::pages(region.len / 4096).ok_or("out of memory")?;
                Pages {
                    addr: run.as_mut_ptr() as u64,
                    len: run.len(),
                }
            }
        };
        // SAFETY: our own pages, kept by the slot (or as spare) from here
        // on, reached only through `Shared`.
        let memory =
            unsafe { Shared::new(pages.addr as *mut u8, region.len) }.ok_or("no memory")?;
        let parts = region.parts(&memory).map_err(|_| "layout")?;
        Endpoint::lay_out(&parts.ctrl, region.left_order, region.right_order)
            .map_err(|_| "layout")?;
        let mut grefs = [0u32; MAX_PAGES];
        let count = region.len / 4096;
        for (i, gref) in grefs[..count].iter_mut().enumerate() {
            match grant::grant(peer_domid, pages.addr + i as u64 * 4096, false) {
                Ok(g) => *gref = g,
                Err(why) => {
                    grefs[..i].iter().for_each(|&g| {
                        grant::revoke(g);
                    });
                    self.spare[index] = Some(pages);
                    return Err(why);
                }
            }
        }
        // The rings' own pages, as libxenvchan lists them: left, then right.
        for (i, &gref) in grefs[1..count].iter().enumerate() {
            parts
                .ctrl
                .u32_at(layout::GRANTS + 4 * i)
                .store(gref, core::sync::atomic::Ordering::Relaxed);
        }
        let evtchn = match events::alloc_unbound(peer_domid) {
            Ok(port) => port,
            Err(_) => {
                grefs[..count].iter().for_each(|&g| {
                    grant::revoke(g);
                });
                self.spare[index] = Some(pages);
                return Err("no event channel");
            }
        };
        let dir = metadata_path(self.domid, peer_domid, port.as_str());
        let published = publish(dir.as_str(), self.domid, peer_domid, grefs[0], evtchn);
        self.slots[index] = Slot::Serving {
            peer_domid,
            port,
            evtchn,
            pages,
            grefs,
            count,
        };
        if published.is_err() {
            self.close(index as u32);
            return Err("publishing the channel in XenStore");
        }
        Ok(region.len as u32)
    }

    /// Maps the listener's channel once it is published; whether it is.
    fn try_map(&mut self, index: usize) -> bool {
        let Slot::Asking {
            peer,
            peer_domid,
            port,
            ..
        } = self.slots[index]
        else {
            return false;
        };
        let dir = metadata_path(peer_domid, self.domid, port.as_str());
        let mut buf = [0u8; 16];
        let read = |key: &str, buf: &mut [u8; 16]| {
            xenstore::read(xs_path!("{}/{key}", dir.as_str()).as_str(), buf)
                .ok()
                .and_then(|v| v.parse::<u32>().ok())
        };
        let (Some(evtchn), Some(ring_ref)) =
            (read("event-channel", &mut buf), read("ring-ref", &mut buf))
        else {
            return false;
        };
        match map_channel(index, peer_domid, ring_ref, evtchn) {
            Ok((handles, count, size, local)) => {
                self.slots[index] = Slot::Mapped {
                    peer,
                    peer_domid,
                    port,
                    evtchn: local,
                    handles,
                    count,
                    size,
                };
                self.push(ConduitEvent {
                    slot: index as u32,
                    kind: abi::EVENT_CONNECTED,
                    size,
                    peer_len: peer.len,
                    port_len: port.len,
                    peer: peer.bytes,
                    port: port.bytes,
                    ..ConduitEvent::default()
                });
                true
            }
            // Perhaps what is published is a channel of before: wait.
            Err(_) => false,
        }
    }

    fn fail_asking(&mut self, index: usize) {
        if let Slot::Asking { peer, port, .. } =
            core::mem::replace(&mut self.slots[index], Slot::Free)
        {
            withdraw(peer.as_str(), self.name, port.as_str());
            self.push(refusal(index, abi::REFUSED_UNREACHABLE));
        }
    }

    /// Marks gone the peers whose domains are (their homes went with them).
    fn mark_departed_peers(&mut self) {
        for index in 0..SLOTS {
            let (peer_domid, role) = match &self.slots[index] {
                Slot::Serving { peer_domid, .. } => (*peer_domid, Role::Client),
                Slot::Mapped { peer_domid, .. } => (*peer_domid, Role::Server),
                _ => continue,
            };
            let mut buf = [0u8; 8];
            let gone = matches!(
                xenstore::read(xs_path!("/local/domain/{peer_domid}/domid").as_str(), &mut buf),
                Err(e) if e.is_missing()
            );
            if gone {
                let size = match &self.slots[index] {
                    Slot::Mapped { size, .. } => *size,
                    _ => layout::PAGE_SIZE as u32,
                };
                if let Some(memory) = self.memory(index as u32, size.min(layout::PAGE_SIZE as u32))
                {
                    jitsu_vchan::mark_gone(&memory, role);
                }
            }
        }
    }
}

fn slot_base(index: usize) -> u64 {
    WINDOW + index as u64 * SLOT_SIZE
}

fn metadata_path(server: u16, client: u16, port: &str) -> xenstore::Text<128> {
    xs_path!("/local/domain/{server}/data/vchan/{client}/{port}")
}

fn withdraw(server: &str, me: &str, port: &str) {
    let _ = xenstore::rm(xs_path!("/conduit/{server}/{me}/{port}").as_str());
}

fn refusal(slot: usize, reason: u32) -> ConduitEvent {
    ConduitEvent {
        slot: slot as u32,
        kind: abi::EVENT_REFUSED,
        reason,
        ..ConduitEvent::default()
    }
}

/// Writes the channel's keys for the client to read, the event channel
/// last (a client waits for it).
fn publish(
    dir: &str,
    me: u16,
    peer: u16,
    ring_ref: u32,
    evtchn: u32,
) -> Result<(), xenstore::Error> {
    let mut text = xenstore::Text::<16>::new();
    let _ = core::fmt::Write::write_fmt(&mut text, format_args!("{ring_ref}"));
    let ring = xs_path!("{dir}/ring-ref");
    xenstore::write(ring.as_str(), text.as_str())?;
    xenstore::share_with(ring.as_str(), me, peer)?;
    xenstore::share_with(dir, me, peer)?;
    let mut text = xenstore::Text::<16>::new();
    let _ = core::fmt::Write::write_fmt(&mut text, format_args!("{evtchn}"));
    let channel = xs_path!("{dir}/event-channel");
    xenstore::write(channel.as_str(), text.as_str())?;
    xenstore::share_with(channel.as_str(), me, peer)
}

/// Maps a listener's channel in slot `index`: the control page, then the
/// rings' own pages its grant list names; binds to its event channel.
fn map_channel(
    index: usize,
    peer: u16,
    ring_ref: u32,
    evtchn: u32,
) -> Result<([u32; MAX_PAGES], usize, u32, u32), &'static str> {
    let base = slot_base(index);
    let mut handles = [0u32; MAX_PAGES];
    handles[0] = grant::map(peer, ring_ref, base)?;
    let mut count = 1;
    let undo = |handles: &[u32]| {
        for (i, &h) in handles.iter().enumerate() {
            grant::unmap(base + i as u64 * 4096, h);
        }
    };
    // SAFETY: the control page is mapped at `base` until unmapped here or
    // at close; it is reached only through `Shared`.
    let ctrl = unsafe { Shared::new(base as *mut u8, layout::PAGE_SIZE) }.ok_or("no page")?;
    let region = match layout::region_of(&ctrl) {
        Ok(r) if r.left_order <= MAX_ORDER && r.right_order <= MAX_ORDER => r,
        _ => {
            undo(&handles[..count]);
            return Err("the listener's rings are larger than this platform maps");
        }
    };
    let pages = region.len / 4096;
    while count < pages {
        let gref = ctrl
            .u32_at(layout::GRANTS + 4 * (count - 1))
            .load(core::sync::atomic::Ordering::Acquire);
        match grant::map(peer, gref, base + count as u64 * 4096) {
            Ok(h) => handles[count] = h,
            Err(why) => {
                undo(&handles[..count]);
                return Err(why);
            }
        }
        count += 1;
    }
    match events::bind_interdomain(peer, evtchn) {
        Ok(local) => Ok((handles, count, region.len as u32, local)),
        Err(_) => {
            undo(&handles[..count]);
            Err("cannot bind the listener's event channel")
        }
    }
}

/// The one wait of an event loop's round: signals `signal`'s peers, then
/// blocks on the NIC's, the store's and every channel's event channel, or
/// the timeout; reads the store if it spoke.
pub(crate) fn wait(
    net: Option<&mut NetDevice>,
    device: &mut Device,
    signal: u64,
    timeout_nanos: u64,
) -> Ready {
    let mut ports = [0u32; 2 + SLOTS];
    let mut n = 0;
    let mut timeout = timeout_nanos;
    if let Some(net) = net {
        if net.arm() {
            timeout = 0;
        }
        ports[n] = net.port();
        n += 1;
    }
    if device.queued > 0 {
        timeout = 0;
    }
    for index in 0..SLOTS {
        if signal & (1 << index) != 0 {
            if let Some(evtchn) = device.event_channel(index) {
                events::notify(evtchn);
            }
        }
    }
    ports[n] = xenstore::port();
    n += 1;
    let first_channel = n;
    let mut slots = [0usize; SLOTS];
    for index in 0..SLOTS {
        if let Some(evtchn) = device.event_channel(index) {
            ports[n] = evtchn;
            slots[n - first_channel] = index;
            n += 1;
        }
    }
    if device.asking() {
        timeout = timeout.min(RESCAN_NANOS);
    }
    events::wait(&ports[..n], timeout);
    let mut signalled = 0u64;
    for (i, &port) in ports[first_channel..n].iter().enumerate() {
        if events::take(port) {
            signalled |= 1 << slots[i];
        }
    }
    if events::take(xenstore::port()) || device.asking() {
        device.look_at_the_store();
    }
    Ready {
        events: device.queued > 0,
        signalled,
    }
}
