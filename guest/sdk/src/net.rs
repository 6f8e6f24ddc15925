//! The guest's network: a smoltcp `Device` over the batched net hypercalls,
//! and an event loop that blocks in the monitor until a frame arrives or the
//! next smoltcp (or application) deadline passes.
//!
//! Exits are expensive (tens of microseconds on nested KVM), so frames move
//! in batches: one NET_READ fills a buffer with every frame that is waiting,
//! and frames to send are packed and handed over with one NET_WRITE per loop
//! iteration.

use core::fmt;

use jitsu_abi::hypercall::{FRAME_HEADER_LEN, READY_NET};
use jitsu_abi::ETHERNET_HEADER_LEN;
use smoltcp::iface::{Config, Interface, SocketSet, SocketStorage};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, Ipv4Address};

use crate::{clock, heap, hypercall, Boot};

/// Room for a few dozen full-size frames per exit, each way.
const BATCH_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetError {
    /// The monitor gave this guest no network device (`jitsu run` without `--net`).
    NoDevice,
    /// The heap cannot hold the buffers asked for.
    OutOfMemory,
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::NoDevice => {
                f.write_str("no network device (run with --net TAP --ip ADDR/PREFIX)")
            }
            NetError::OutOfMemory => f.write_str("out of guest memory for network buffers"),
        }
    }
}

/// Frames read from the monitor, consumed one by one.
struct RxQueue {
    buf: &'static mut [u8],
    pos: usize,
    len: usize,
}

impl RxQueue {
    fn fill(&mut self) {
        let result = hypercall::net_read(self.buf);
        self.pos = 0;
        self.len = (result.used as usize).min(self.buf.len());
    }

    fn has_frames(&self) -> bool {
        self.pos + FRAME_HEADER_LEN <= self.len
    }

    fn next(&mut self) -> Option<&[u8]> {
        let header = self.buf.get(self.pos..self.pos + FRAME_HEADER_LEN)?;
        let frame_len = u16::from_le_bytes([header[0], header[1]]) as usize;
        let start = self.pos + FRAME_HEADER_LEN;
        if start + frame_len > self.len {
            // The monitor never does this; stop at a torn batch, do not trust it.
            self.len = self.pos;
            return None;
        }
        self.pos = start + frame_len;
        Some(&self.buf[start..start + frame_len])
    }
}

/// Frames to send, packed until the next flush.
struct TxQueue {
    buf: &'static mut [u8],
    len: usize,
}

impl TxQueue {
    fn push<R>(&mut self, frame_len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> R {
        if self.len + FRAME_HEADER_LEN + frame_len > self.buf.len() {
            self.flush();
        }
        let start = self.len + FRAME_HEADER_LEN;
        self.buf[self.len..start].copy_from_slice(&(frame_len as u16).to_le_bytes());
        self.len = start + frame_len;
        fill(&mut self.buf[start..start + frame_len])
    }

    fn flush(&mut self) {
        if self.len > 0 {
            hypercall::net_write(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

/// The guest's NIC as smoltcp sees it.
pub struct NetDevice {
    rx: RxQueue,
    tx: TxQueue,
    mtu: usize,
}

impl NetDevice {
    fn new(mtu: u16) -> Result<NetDevice, NetError> {
        let batch = || heap::bytes(BATCH_BYTES).ok_or(NetError::OutOfMemory);
        Ok(NetDevice {
            rx: RxQueue {
                buf: batch()?,
                pos: 0,
                len: 0,
            },
            tx: TxQueue {
                buf: batch()?,
                len: 0,
            },
            mtu: mtu as usize,
        })
    }
}

pub struct RxToken<'a> {
    frame: &'a [u8],
}

pub struct TxToken<'a> {
    tx: &'a mut TxQueue,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.tx.push(len, f)
    }
}

impl phy::Device for NetDevice {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let frame = self.rx.next()?;
        Some((RxToken { frame }, TxToken { tx: &mut self.tx }))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        Some(TxToken { tx: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.mtu + ETHERNET_HEADER_LEN;
        caps
    }
}

/// A configured interface, its device and its sockets.
pub struct Stack {
    pub iface: Interface,
    pub device: NetDevice,
    pub sockets: SocketSet<'static>,
}

impl Stack {
    /// Configures the NIC from the boot info, with room for `max_sockets`.
    pub fn new(boot: &Boot, max_sockets: usize) -> Result<Stack, NetError> {
        let net = boot.net().ok_or(NetError::NoDevice)?;
        let mut device = NetDevice::new(net.mtu)?;
        let mut config = Config::new(EthernetAddress(net.mac).into());
        config.random_seed = clock::rdtsc();
        let mut iface = Interface::new(config, &mut device, clock::now());
        let [a, b, c, d] = net.ipv4;
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::v4(a, b, c, d), net.prefix_len));
        });
        if net.gateway != [0; 4] {
            let [a, b, c, d] = net.gateway;
            let _ = iface
                .routes_mut()
                .add_default_ipv4_route(Ipv4Address::new(a, b, c, d));
        }
        let storage =
            heap::array(max_sockets, |_| SocketStorage::EMPTY).ok_or(NetError::OutOfMemory)?;
        Ok(Stack {
            iface,
            device,
            sockets: SocketSet::new(storage),
        })
    }

    /// Runs the event loop forever. `app` is called once per iteration, after
    /// smoltcp has taken in what arrived; it returns how soon it wants to be
    /// called again even if nothing arrives.
    pub fn run(
        &mut self,
        mut app: impl FnMut(&mut SocketSet<'static>, Instant) -> Option<Duration>,
    ) -> ! {
        loop {
            let now = clock::now();
            self.iface.poll(now, &mut self.device, &mut self.sockets);
            let app_wake = app(&mut self.sockets, now);
            // A second poll sends what the application queued.
            self.iface.poll(now, &mut self.device, &mut self.sockets);
            self.device.tx.flush();
            if self.device.rx.has_frames() {
                continue;
            }
            let wake = match (self.iface.poll_delay(now, &self.sockets), app_wake) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timeout = wake.map_or(u64::MAX, |d| d.total_micros().saturating_mul(1000));
            if hypercall::poll(timeout) & READY_NET != 0 {
                self.device.rx.fill();
            }
        }
    }
}
