//! netfront: the domain's vif as a smoltcp `Device`. Two page rings shared
//! with netback in dom0 (granted to it), one event channel, and packet
//! buffers granted once for good: netback copies received frames into our
//! rx pages (`request-rx-copy`) and copies sent frames out of our tx pages.

use jitsu_abi::{NetConfig, ETHERNET_HEADER_LEN};
use jitsu_xen_abi::defs::*;
use jitsu_xen_abi::ring::FrontRing;
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::netconfig::VIF;
use super::{events, grant, xenstore};
use crate::heap;
use crate::net::NetError;
use crate::xs_path;

/// Two frames per tx page; a frame must not cross its page.
const TX_SLOT: usize = 2048;
/// How long netback may take to connect (software-emulated test beds are slow).
const CONNECT_NANOS: u64 = 60_000_000_000;

type RxRing = FrontRing<NET_RX_RING_SIZE, 8, NetifRxRequest, NetifRxResponse>;
type TxRing = FrontRing<NET_TX_RING_SIZE, 12, NetifTxRequest, NetifTxResponse>;

/// A ring on a fresh heap page.
fn ring<R>(page: &'static mut [u8], make: unsafe fn(*mut u8) -> R) -> R {
    // SAFETY: the page is zeroed, page-aligned and page-sized (heap::pages),
    // lives forever, and is handed only to this ring (and netback).
    unsafe { make(page.as_mut_ptr()) }
}

struct Rx {
    ring: RxRing,
    pages: &'static mut [u8],
    grefs: &'static mut [u32],
    /// A frame taken from the ring and not yet handed to smoltcp.
    ready: Option<NetifRxResponse>,
}

impl Rx {
    /// Gives buffer `id` back to netback. There is always room: each of
    /// the ring's slots belongs to one buffer.
    fn post(&mut self, id: u16) {
        let gref = self.grefs[id as usize];
        let _ = self.ring.put_request(NetifRxRequest { id, pad: 0, gref });
    }

    /// The next good frame, if one came; bad ones are reposted at once.
    fn next(&mut self) -> Option<NetifRxResponse> {
        if self.ready.is_some() {
            return self.ready;
        }
        while let Some(rsp) = self.ring.take_response() {
            let good = rsp.status > 0
                && (rsp.id as usize) < NET_RX_RING_SIZE
                && rsp.offset as usize + rsp.status as usize <= 4096
                && rsp.flags & (NETRXF_MORE_DATA | NETRXF_EXTRA_INFO) == 0;
            if good {
                self.ready = Some(rsp);
                return self.ready;
            }
            if (rsp.id as usize) < NET_RX_RING_SIZE {
                self.post(rsp.id);
            }
        }
        None
    }
}

struct Tx {
    ring: TxRing,
    pages: &'static mut [u8],
    grefs: &'static mut [u32],
    free: &'static mut [u16],
    free_len: usize,
}

impl Tx {
    fn reap(&mut self) {
        while let Some(rsp) = self.ring.take_response() {
            if (rsp.id as usize) < NET_TX_RING_SIZE && self.free_len < self.free.len() {
                self.free[self.free_len] = rsp.id;
                self.free_len += 1;
            }
        }
    }

    fn send<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> R {
        self.free_len -= 1;
        let id = self.free[self.free_len];
        let start = id as usize * TX_SLOT;
        let result = fill(&mut self.pages[start..start + len]);
        // There is room: as many ids as slots, and this one was free.
        let _ = self.ring.put_request(NetifTxRequest {
            gref: self.grefs[id as usize / 2],
            offset: (start % 4096) as u16,
            flags: 0,
            id,
            size: len as u16,
        });
        result
    }
}

pub struct NetDevice {
    rx: Rx,
    tx: Tx,
    port: u32,
    mtu: usize,
}

fn store_err(what: &'static str) -> impl FnOnce(xenstore::Error) -> NetError {
    move |err| {
        crate::println!("netfront: {what}: {err}");
        NetError::Device(what)
    }
}

impl NetDevice {
    pub(crate) fn new(net: &NetConfig) -> Result<NetDevice, NetError> {
        let mtu = net.mtu as usize;
        if mtu + ETHERNET_HEADER_LEN > TX_SLOT {
            return Err(NetError::Device("MTU above 2034 is not supported on Xen"));
        }
        let mut buf = [0u8; 128];
        let backend_id: u16 = xenstore::read(xs_path!("{VIF}/backend-id").as_str(), &mut buf)
            .map_err(store_err("reading backend-id"))?
            .parse()
            .map_err(|_| NetError::Device("backend-id is not a domain id"))?;
        let mut backend = [0u8; 128];
        let backend = xenstore::read(xs_path!("{VIF}/backend").as_str(), &mut backend)
            .map_err(store_err("reading backend"))?;

        let pages = |n| heap::pages(n).ok_or(NetError::OutOfMemory);
        let tx_ring = pages(1)?;
        let rx_ring = pages(1)?;
        let grant = |addr: u64, readonly| {
            grant::grant(backend_id, addr, readonly).map_err(NetError::Device)
        };
        let tx_ring_ref = grant(tx_ring.as_ptr() as u64, false)?;
        let rx_ring_ref = grant(rx_ring.as_ptr() as u64, false)?;
        let mut rx = Rx {
            ring: ring(rx_ring, RxRing::new),
            pages: pages(NET_RX_RING_SIZE)?,
            grefs: heap::array(NET_RX_RING_SIZE, |_| 0u32).ok_or(NetError::OutOfMemory)?,
            ready: None,
        };
        for i in 0..NET_RX_RING_SIZE {
            rx.grefs[i] = grant(rx.pages[i * 4096..].as_ptr() as u64, false)?;
        }
        let tx_pages = NET_TX_RING_SIZE * TX_SLOT / 4096;
        let tx = Tx {
            ring: ring(tx_ring, TxRing::new),
            pages: pages(tx_pages)?,
            grefs: heap::array(tx_pages, |_| 0u32).ok_or(NetError::OutOfMemory)?,
            free: heap::array(NET_TX_RING_SIZE, |i| i as u16).ok_or(NetError::OutOfMemory)?,
            free_len: NET_TX_RING_SIZE,
        };
        for i in 0..tx_pages {
            tx.grefs[i] = grant(tx.pages[i * 4096..].as_ptr() as u64, true)?;
        }
        for id in 0..NET_RX_RING_SIZE as u16 {
            rx.post(id);
        }
        rx.ring.push();
        let port =
            events::alloc_unbound(backend_id).map_err(|_| NetError::Device("no event channel"))?;

        // The handshake: wait for netback to be ready for us, publish our
        // rings, say we are connected, wait until netback is too.
        let backend_state = xs_path!("{backend}/state");
        xenstore::watch(backend_state.as_str(), "netfront")
            .map_err(store_err("watching the backend"))?;
        wait_for_state(backend_state.as_str(), |s| s >= 2)?;
        let mut text = xenstore::Text::<16>::new();
        for (key, value) in [
            ("tx-ring-ref", tx_ring_ref),
            ("rx-ring-ref", rx_ring_ref),
            ("event-channel", port),
            ("request-rx-copy", 1),
            ("feature-rx-notify", 1),
            ("feature-no-csum-offload", 1),
            ("feature-sg", 0),
            ("feature-gso-tcpv4", 0),
            ("state", XENBUS_STATE_CONNECTED),
        ] {
            text = xenstore::Text::new();
            let _ = core::fmt::Write::write_fmt(&mut text, format_args!("{value}"));
            xenstore::write(xs_path!("{VIF}/{key}").as_str(), text.as_str())
                .map_err(store_err("writing the frontend's keys"))?;
        }
        let _ = text;
        wait_for_state(backend_state.as_str(), |s| s == XENBUS_STATE_CONNECTED)?;
        events::notify(port);
        let mut device = NetDevice { rx, tx, port, mtu };
        device.announce(net);
        Ok(device)
    }

    /// Sends a gratuitous ARP for our address: a client in dom0 that asked
    /// for it while the vif was not yet connected has its question lost,
    /// and would otherwise wait a second for its own retry.
    fn announce(&mut self, net: &NetConfig) {
        let mut frame = [0u8; 42];
        frame[0..6].copy_from_slice(&[0xff; 6]);
        frame[6..12].copy_from_slice(&net.mac);
        frame[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        // Ethernet, IPv4, 6 + 4 byte addresses, request.
        frame[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        frame[22..28].copy_from_slice(&net.mac);
        frame[28..32].copy_from_slice(&net.ipv4);
        frame[38..42].copy_from_slice(&net.ipv4);
        self.tx.reap();
        if self.tx.free_len > 0 {
            self.tx.send(frame.len(), |buf| buf.copy_from_slice(&frame));
            self.flush();
        }
    }

    /// Publishes queued frames (and reposted rx buffers) to netback.
    pub(crate) fn flush(&mut self) {
        let rx = self.rx.ring.push();
        let tx = self.tx.ring.push();
        if rx || tx {
            events::notify(self.port);
        }
    }

    /// Whether a received frame waits to be consumed.
    pub(crate) fn pending(&mut self) -> bool {
        self.rx.next().is_some()
    }

    /// Before a wait on this and other ports: clears the port, asks netback
    /// to signal news; whether a frame is there already.
    pub(crate) fn arm(&mut self) -> bool {
        events::take(self.port);
        self.rx.ring.arm();
        self.tx.ring.arm();
        self.pending()
    }

    pub(crate) fn port(&self) -> u32 {
        self.port
    }

    /// Blocks until netback has news or `timeout_nanos` passed.
    pub(crate) fn wait(&mut self, timeout_nanos: u64) {
        events::take(self.port);
        self.rx.ring.arm();
        self.tx.ring.arm();
        if self.pending() {
            return;
        }
        events::wait(&[self.port], timeout_nanos);
        events::take(self.port);
    }
}

fn wait_for_state(path: &str, ok: impl Fn(u32) -> bool) -> Result<(), NetError> {
    let deadline = events::system_time_nanos() + CONNECT_NANOS;
    loop {
        let mut buf = [0u8; 16];
        let state = xenstore::read(path, &mut buf)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(0);
        if ok(state) {
            return Ok(());
        }
        if state >= XENBUS_STATE_CLOSING {
            return Err(NetError::Device("netback is closing"));
        }
        let now = events::system_time_nanos();
        if now >= deadline {
            return Err(NetError::Device("netback did not connect"));
        }
        xenstore::wait_for_event(deadline - now);
    }
}

pub struct RxToken<'a> {
    rx: &'a mut Rx,
}

pub struct TxToken<'a> {
    tx: &'a mut Tx,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let rsp = self
            .rx
            .ready
            .take()
            .expect("a token is made only for a ready frame");
        let start = rsp.id as usize * 4096 + rsp.offset as usize;
        let result = f(&self.rx.pages[start..start + rsp.status as usize]);
        self.rx.post(rsp.id);
        result
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.tx.send(len, f)
    }
}

impl phy::Device for NetDevice {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        self.rx.next()?;
        self.tx.reap();
        if self.tx.free_len == 0 {
            return None;
        }
        Some((RxToken { rx: &mut self.rx }, TxToken { tx: &mut self.tx }))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        self.tx.reap();
        (self.tx.free_len > 0).then_some(TxToken { tx: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + ETHERNET_HEADER_LEN;
        caps.max_burst_size = Some(NET_TX_RING_SIZE);
        caps
    }
}
