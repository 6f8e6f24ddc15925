//! Xen has no conduit device in this SDK yet: [`Device::open`] finds none,
//! so `Conduit::new` says `NoDevice` on Xen (Conduit over grants and event
//! channels is the next step), and no value of [`Device`] can exist.

use jitsu_abi::ConduitEvent;
use jitsu_vchan::Shared;

use super::net::NetDevice;
use crate::conduit::{ConduitError, Ready};
use crate::Boot;

pub(crate) enum Device {}

impl Device {
    pub(crate) fn open(_boot: &Boot) -> Option<Device> {
        None
    }

    pub(crate) fn name(&self) -> &'static str {
        match *self {}
    }

    pub(crate) fn listen(&mut self, _name: &str) -> Result<(), ConduitError> {
        match *self {}
    }

    pub(crate) fn connect(
        &mut self,
        _name: &str,
        _port: &str,
        _orders: (u16, u16),
    ) -> Result<u32, ConduitError> {
        match *self {}
    }

    pub(crate) fn events(&mut self, _out: &mut [ConduitEvent]) -> usize {
        match *self {}
    }

    pub(crate) fn close(&mut self, _slot: u32) {
        match *self {}
    }

    pub(crate) fn memory(&self, _slot: u32, _size: u32) -> Option<Shared> {
        match *self {}
    }
}

pub(crate) fn wait(net: Option<&mut NetDevice>, _signal: u64, timeout_nanos: u64) -> Ready {
    if let Some(net) = net {
        net.wait(timeout_nanos);
    }
    Ready::default()
}
