//! The KVM monitor's conduit device: channels in the window above guest
//! memory, set up by the monitor, and one exit per round of the event
//! loop that both signals peers and waits (SIGNAL_POLL).

use jitsu_abi::hypercall::{READY_CONDUIT_EVENT, READY_NET, RET_BUSY, RET_INVALID, RET_OK};
use jitsu_abi::ConduitEvent;
use jitsu_vchan::Shared;

use super::hypercall;
use super::net::NetDevice;
use crate::conduit::{ConduitError, Ready};
use crate::Boot;

pub(crate) struct Device {
    window: u64,
    slots: u32,
    slot_size: u64,
    name: &'static str,
}

impl Device {
    pub(crate) fn open(boot: &Boot) -> Option<Device> {
        let info = &boot.info().conduit;
        let len = (info.name_len as usize).min(jitsu_abi::conduit::LABEL_MAX);
        (info.version == jitsu_abi::conduit::VERSION).then_some(Device {
            window: info.window,
            slots: info.slots.min(jitsu_abi::conduit::SLOTS),
            slot_size: info.slot_size,
            name: core::str::from_utf8(&info.name[..len]).unwrap_or(""),
        })
    }

    /// The guest's own Conduit name.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    pub(crate) fn listen(&mut self, name: &str) -> Result<(), ConduitError> {
        match hypercall::conduit_listen(name) {
            RET_OK => Ok(()),
            _ => Err(ConduitError::NotOurName),
        }
    }

    pub(crate) fn connect(
        &mut self,
        name: &str,
        port: &str,
        orders: (u16, u16),
    ) -> Result<u32, ConduitError> {
        let orders = orders.0 as u64 | (orders.1 as u64) << 16;
        match hypercall::conduit_connect(name, port, orders) {
            Ok(slot) if slot < self.slots => Ok(slot),
            Ok(_) | Err(RET_INVALID) => Err(ConduitError::Invalid),
            Err(RET_BUSY) => Err(ConduitError::Busy),
            Err(_) => Err(ConduitError::NoDevice),
        }
    }

    pub(crate) fn events(&mut self, out: &mut [ConduitEvent]) -> usize {
        hypercall::conduit_events(out)
    }

    /// Signals `slot`'s peer now, in an exit of its own.
    pub(crate) fn signal_now(&mut self, slot: u32) {
        if slot < self.slots {
            hypercall::signal_poll(1 << slot, 0);
        }
    }

    pub(crate) fn close(&mut self, slot: u32) {
        hypercall::conduit_close(slot);
    }

    /// Slot `slot`'s first `size` bytes, where the monitor put a channel.
    pub(crate) fn memory(&self, slot: u32, size: u32) -> Option<Shared> {
        if slot >= self.slots || size as u64 > self.slot_size {
            return None;
        }
        let base = self.window + slot as u64 * self.slot_size;
        // SAFETY: the monitor mapped the channel's memory there (the event
        // says how much) and keeps it until CONDUIT_CLOSE; the SDK drops
        // every view of it first, and makes no Rust reference into it.
        unsafe { Shared::new(base as *mut u8, size as usize) }
    }
}

/// The one exit of an event loop's round: signals `signal`'s peers, waits
/// for a frame, a conduit event or signal, or the timeout; reads frames
/// that came.
pub(crate) fn wait(
    net: Option<&mut NetDevice>,
    _device: &mut Device,
    signal: u64,
    timeout_nanos: u64,
) -> Ready {
    let (ready, signalled) = hypercall::signal_poll(signal, timeout_nanos);
    if ready & READY_NET != 0 {
        if let Some(net) = net {
            net.fill();
        }
    }
    Ready {
        events: ready & READY_CONDUIT_EVENT != 0,
        signalled,
    }
}
