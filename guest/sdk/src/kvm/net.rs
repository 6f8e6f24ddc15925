//! The KVM monitor's NIC as a smoltcp `Device`, over the batched net
//! hypercalls.
//!
//! Exits are expensive (tens of microseconds on nested KVM), so frames move
//! in batches: one NET_READ fills a buffer with every frame that is waiting,
//! and frames to send are packed and handed over with one NET_WRITE per loop
//! iteration.

use jitsu_abi::hypercall::{FRAME_HEADER_LEN, READY_NET};
use jitsu_abi::{NetConfig, ETHERNET_HEADER_LEN};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::hypercall;
use crate::heap;
use crate::net::NetError;

/// Room for a few dozen full-size frames per exit, each way.
const BATCH_BYTES: usize = 64 * 1024;

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
    pub(crate) fn new(net: &NetConfig) -> Result<NetDevice, NetError> {
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
            mtu: net.mtu as usize,
        })
    }

    /// Hands what was queued to the monitor.
    pub(crate) fn flush(&mut self) {
        self.tx.flush();
    }

    /// Whether frames read earlier still wait to be consumed.
    pub(crate) fn pending(&self) -> bool {
        self.rx.has_frames()
    }

    /// Blocks in the monitor until frames arrive or `timeout_nanos` passed
    /// (`u64::MAX`: no deadline), and reads what came.
    pub(crate) fn wait(&mut self, timeout_nanos: u64) {
        if hypercall::poll(timeout_nanos) & READY_NET != 0 {
            self.rx.fill();
        }
    }

    /// Reads the frames a poll said are there.
    pub(crate) fn fill(&mut self) {
        self.rx.fill();
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
