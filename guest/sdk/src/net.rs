//! The guest's network: a smoltcp interface over the platform's device, and
//! an event loop that blocks until a frame arrives or the next smoltcp (or
//! application) deadline passes.
//!
//! Each platform's device (`kvm/net.rs`, `xen_pvh/netfront.rs`)
//! offers smoltcp's `Device` plus three calls: `flush` what was queued to
//! send, whether received frames are `pending`, and `wait` for more.

use core::fmt;

use smoltcp::iface::{Config, Interface, SocketSet, SocketStorage};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, Ipv4Address};

use crate::conduit::Conduit;
pub use crate::platform::net::NetDevice;
use crate::{clock, heap, Boot};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetError {
    /// The monitor gave this guest no network device (`jitsu run` without `--net`).
    NoDevice,
    /// The heap cannot hold the buffers asked for.
    OutOfMemory,
    /// The platform's device would not come up (the reason is on the console).
    Device(&'static str),
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::NoDevice => f.write_str("no network device (run with --net and --ip)"),
            NetError::OutOfMemory => f.write_str("out of guest memory for network buffers"),
            NetError::Device(why) => write!(f, "network device: {why}"),
        }
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
        let mut device = NetDevice::new(&net)?;
        let mut config = Config::new(EthernetAddress(net.mac).into());
        config.random_seed = clock::counter();
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
            self.device.flush();
            if self.device.pending() {
                continue;
            }
            let wake = match (self.iface.poll_delay(now, &self.sockets), app_wake) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timeout = wake.map_or(u64::MAX, |d| d.total_micros().saturating_mul(1000));
            self.device.wait(timeout);
        }
    }

    /// Runs the event loop forever over the network and Conduit streams:
    /// as [`Stack::run`], with the streams' signals sent and theirs waited
    /// for in the same one exit per round.
    pub fn run_with(
        &mut self,
        conduit: &mut Conduit,
        mut app: impl FnMut(&mut SocketSet<'static>, &mut Conduit, Instant) -> Option<Duration>,
    ) -> ! {
        loop {
            let now = clock::now();
            self.iface.poll(now, &mut self.device, &mut self.sockets);
            let app_wake = app(&mut self.sockets, conduit, now);
            self.iface.poll(now, &mut self.device, &mut self.sockets);
            self.device.flush();
            let news = conduit.spin_then_look(Some(&mut self.device));
            let busy = news || self.device.pending();
            if busy && !conduit.has_signals() {
                continue;
            }
            let wake = match (self.iface.poll_delay(now, &self.sockets), app_wake) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timeout = match (busy, wake) {
                (true, _) => 0,
                (false, wake) => wake.map_or(u64::MAX, |d| d.total_micros().saturating_mul(1000)),
            };
            conduit.wait(Some(&mut self.device), timeout);
        }
    }
}
