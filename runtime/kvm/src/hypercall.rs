//! Serving hypercalls. Every guest address and length is checked against
//! the access map before the monitor reads or writes guest memory; a bad one
//! ends the guest with an error, never the monitor.

use std::os::fd::AsFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jitsu_abi::hypercall as hc;
use jitsu_abi::{
    ConduitClose, ConduitConnect, ConduitEvent, ConduitEvents, ConduitListen, ConsoleWrite, Halt,
    NetIo, Poll, SignalPoll, Walltime,
};
use kvm_ioctls::VmFd;
use nix::poll::{PollFd, PollFlags};
use nix::sys::time::TimeSpec;
use thiserror::Error;

use std::sync::Arc;

use crate::devices::conduit::{CallError, ConduitDevice};
use crate::devices::console::Console;
use crate::devices::net::NetDevice;
use crate::layout::AccessMap;
use crate::memory::{GuestMemory, Plain};
use crate::stop::StopSignal;

/// What the guest did wrong; the monitor stops it and reports this.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HypercallError {
    #[error("unknown hypercall number {nr}")]
    UnknownCall { nr: u16 },
    #[error(
        "hypercall {call}: the argument's address must be written in 32 bits, got {size} bytes"
    )]
    BadWidth { call: &'static str, size: usize },
    #[error(
        "hypercall {call}: argument structure at {gpa:#x} is outside the guest's writable memory"
    )]
    BadArgument { call: &'static str, gpa: u64 },
    #[error("hypercall {call}: buffer {gpa:#x}+{len:#x} is outside the guest's {access} memory")]
    BadBuffer {
        call: &'static str,
        gpa: u64,
        len: u64,
        access: &'static str,
    },
}

/// What the vCPU loop does after a hypercall.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Resume,
    Halt(u8),
}

pub struct Devices {
    pub console: &'static Console,
    pub net: Option<NetDevice>,
    pub conduit: Option<ConduitDevice>,
    /// Wakes the poll hypercall when the monitor is asked to stop the guest.
    pub stop: Arc<StopSignal>,
}

impl Devices {
    /// Whether the guest has been idle for `d`, as its devices see it now.
    pub fn quiet_for(&mut self, d: Duration) -> bool {
        if let Some(conduit) = self.conduit.as_mut() {
            conduit.moved();
        }
        self.net.as_ref().is_none_or(|n| n.quiet_for(d))
    }
}

pub fn name(nr: u16) -> &'static str {
    match nr {
        hc::WALLTIME => "walltime",
        hc::CONSOLE_WRITE => "console_write",
        hc::POLL => "poll",
        hc::NET_WRITE => "net_write",
        hc::NET_READ => "net_read",
        hc::HALT => "halt",
        hc::CONDUIT_LISTEN => "conduit_listen",
        hc::CONDUIT_CONNECT => "conduit_connect",
        hc::CONDUIT_EVENTS => "conduit_events",
        hc::CONDUIT_CLOSE => "conduit_close",
        hc::SIGNAL_POLL => "signal_poll",
        _ => "unknown",
    }
}

/// The guest memory and what the guest may reach of it, and its VM (where
/// conduit channels are put into its window).
pub struct Guest<'a> {
    pub mem: &'a mut GuestMemory,
    pub access: &'a AccessMap,
    pub vm: &'a VmFd,
}

impl Guest<'_> {
    fn arg<T: Plain>(&self, call: &'static str, gpa: u64) -> Result<T, HypercallError> {
        if !self.access.allows(gpa, size_of::<T>() as u64, true) {
            return Err(HypercallError::BadArgument { call, gpa });
        }
        self.mem
            .read(gpa)
            .map_err(|_| HypercallError::BadArgument { call, gpa })
    }

    fn reply<T: Plain>(
        &mut self,
        call: &'static str,
        gpa: u64,
        value: &T,
    ) -> Result<(), HypercallError> {
        self.mem
            .write(gpa, value)
            .map_err(|_| HypercallError::BadArgument { call, gpa })
    }

    fn buffer(&self, call: &'static str, gpa: u64, len: u64) -> Result<&[u8], HypercallError> {
        let bad = HypercallError::BadBuffer {
            call,
            gpa,
            len,
            access: "readable",
        };
        if !self.access.allows(gpa, len, false) {
            return Err(bad);
        }
        self.mem.slice(gpa, len).map_err(|_| bad)
    }

    fn buffer_mut(
        &mut self,
        call: &'static str,
        gpa: u64,
        len: u64,
    ) -> Result<&mut [u8], HypercallError> {
        let bad = HypercallError::BadBuffer {
            call,
            gpa,
            len,
            access: "writable",
        };
        if !self.access.allows(gpa, len, true) {
            return Err(bad);
        }
        self.mem.slice_mut(gpa, len).map_err(|_| bad)
    }
}

/// Serves hypercall `nr`, whose trap (an `out`, an MMIO store) carried
/// `data`.
pub fn dispatch(
    nr: u16,
    data: &[u8],
    guest: &mut Guest,
    devices: &mut Devices,
) -> Result<Action, HypercallError> {
    if nr >= hc::COUNT {
        return Err(HypercallError::UnknownCall { nr });
    }
    let call = name(nr);
    let gpa = match <[u8; 4]>::try_from(data) {
        Ok(bytes) => u32::from_le_bytes(bytes) as u64,
        Err(_) => {
            return Err(HypercallError::BadWidth {
                call,
                size: data.len(),
            })
        }
    };
    match nr {
        hc::WALLTIME => walltime(guest, gpa),
        hc::CONSOLE_WRITE => console_write(guest, gpa, devices.console),
        hc::POLL => poll(guest, gpa, devices),
        hc::NET_WRITE => net_write(guest, gpa, devices.net.as_mut()),
        hc::NET_READ => net_read(guest, gpa, devices.net.as_mut()),
        hc::CONDUIT_LISTEN => conduit_listen(guest, gpa, devices.conduit.as_mut()),
        hc::CONDUIT_CONNECT => conduit_connect(guest, gpa, devices.conduit.as_mut()),
        hc::CONDUIT_EVENTS => conduit_events(guest, gpa, devices.conduit.as_mut()),
        hc::CONDUIT_CLOSE => conduit_close(guest, gpa, devices.conduit.as_mut()),
        hc::SIGNAL_POLL => signal_poll(guest, gpa, devices),
        _ => halt(guest, gpa),
    }
}

fn walltime(guest: &mut Guest, gpa: u64) -> Result<Action, HypercallError> {
    let _: Walltime = guest.arg("walltime", gpa)?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    guest.reply("walltime", gpa, &Walltime { nanos })?;
    Ok(Action::Resume)
}

fn console_write(guest: &mut Guest, gpa: u64, console: &Console) -> Result<Action, HypercallError> {
    let mut arg: ConsoleWrite = guest.arg("console_write", gpa)?;
    console.write(guest.buffer("console_write", arg.data, arg.len)?);
    arg.ret = hc::RET_OK;
    guest.reply("console_write", gpa, &arg)?;
    Ok(Action::Resume)
}

fn poll(guest: &mut Guest, gpa: u64, devices: &mut Devices) -> Result<Action, HypercallError> {
    let mut arg: Poll = guest.arg("poll", gpa)?;
    let outcome = wait(guest.vm, devices, arg.timeout_nanos);
    (arg.ready, arg.ret) = (outcome.ready, outcome.ret);
    guest.reply("poll", gpa, &arg)?;
    Ok(Action::Resume)
}

fn signal_poll(
    guest: &mut Guest,
    gpa: u64,
    devices: &mut Devices,
) -> Result<Action, HypercallError> {
    let mut arg: SignalPoll = guest.arg("signal_poll", gpa)?;
    if let Some(conduit) = devices.conduit.as_mut() {
        conduit.signal(arg.signal);
    }
    let outcome = wait(guest.vm, devices, arg.timeout_nanos);
    (arg.ready, arg.signalled, arg.ret) = (outcome.ready, outcome.signalled, outcome.ret);
    guest.reply("signal_poll", gpa, &arg)?;
    Ok(Action::Resume)
}

/// What a wait found.
struct Waited {
    ready: u64,
    signalled: u64,
    ret: u64,
}

/// Blocks until a device has input, a stop is asked for, or the timeout
/// (`u64::MAX`: none; 0: just look) passes.
fn wait(vm: &VmFd, devices: &mut Devices, timeout_nanos: u64) -> Waited {
    let mut out = Waited {
        ready: 0,
        signalled: 0,
        ret: hc::RET_OK,
    };
    let net_pending = devices.net.as_ref().is_some_and(NetDevice::has_pending);
    let events_pending = devices
        .conduit
        .as_ref()
        .is_some_and(ConduitDevice::has_events);
    let timeout = if net_pending || events_pending {
        Some(TimeSpec::from_duration(Duration::ZERO))
    } else {
        (timeout_nanos != u64::MAX)
            .then(|| TimeSpec::from_duration(Duration::from_nanos(timeout_nanos)))
    };
    // The stop eventfd first, then the NIC, the broker and the channels.
    let mut fds = vec![PollFd::new(devices.stop.fd(), PollFlags::POLLIN)];
    let net_at = devices.net.as_ref().map(|net| {
        fds.push(PollFd::new(net.tap().file().as_fd(), PollFlags::POLLIN));
        fds.len() - 1
    });
    let mut slots = Vec::new();
    let broker_at = devices.conduit.as_ref().map(|conduit| {
        let (broker, wakes) = conduit.poll_fds();
        fds.push(PollFd::new(broker, PollFlags::POLLIN));
        let at = fds.len() - 1;
        for (slot, fd) in wakes {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
            slots.push(slot);
        }
        at
    });
    out.ret = match nix::poll::ppoll(&mut fds, timeout, None) {
        Ok(_) | Err(nix::Error::EINTR) => hc::RET_OK,
        Err(_) => hc::RET_IO_ERROR,
    };
    let ready: Vec<bool> = fds
        .iter()
        .map(|f| f.revents().is_some_and(|r| r.contains(PollFlags::POLLIN)))
        .collect();
    drop(fds);
    if net_pending || net_at.is_some_and(|at| ready[at]) {
        out.ready |= hc::READY_NET;
    }
    if let (Some(conduit), Some(at)) = (devices.conduit.as_mut(), broker_at) {
        let woken: Vec<usize> = slots
            .iter()
            .zip(&ready[at + 1..])
            .filter(|(_, &r)| r)
            .map(|(&slot, _)| slot)
            .collect();
        let (signalled, events) = conduit.after_poll(vm, ready[at], &woken);
        out.signalled = signalled;
        if events {
            out.ready |= hc::READY_CONDUIT_EVENT;
        }
        if signalled != 0 {
            out.ready |= hc::READY_CONDUIT_SIGNAL;
        }
    }
    out
}

fn net_write(
    guest: &mut Guest,
    gpa: u64,
    net: Option<&mut NetDevice>,
) -> Result<Action, HypercallError> {
    let mut arg: NetIo = guest.arg("net_write", gpa)?;
    let batch = guest.buffer("net_write", arg.data, arg.len)?;
    (arg.frames, arg.used, arg.ret) = match net {
        None => (0, 0, hc::RET_NO_DEVICE),
        Some(net) => match net.write_batch(batch) {
            Ok(frames) => (frames, arg.len, hc::RET_OK),
            Err(bad) => (bad.frames_sent, bad.offset as u64, hc::RET_INVALID),
        },
    };
    guest.reply("net_write", gpa, &arg)?;
    Ok(Action::Resume)
}

fn net_read(
    guest: &mut Guest,
    gpa: u64,
    net: Option<&mut NetDevice>,
) -> Result<Action, HypercallError> {
    let mut arg: NetIo = guest.arg("net_read", gpa)?;
    let buf = guest.buffer_mut("net_read", arg.data, arg.len)?;
    (arg.frames, arg.used, arg.ret) = match net {
        None => (0, 0, hc::RET_NO_DEVICE),
        Some(net) => match net.read_batch(buf) {
            Ok((frames, used)) => (frames, used as u64, hc::RET_OK),
            Err(_) => (0, 0, hc::RET_IO_ERROR),
        },
    };
    guest.reply("net_read", gpa, &arg)?;
    Ok(Action::Resume)
}

fn halt(guest: &mut Guest, gpa: u64) -> Result<Action, HypercallError> {
    let arg: Halt = guest.arg("halt", gpa)?;
    Ok(Action::Halt(arg.status as u8))
}

/// A guest label (a name or a port) the guest named by address and length.
fn label<'g>(
    guest: &'g Guest,
    call: &'static str,
    gpa: u64,
    len: u64,
) -> Result<&'g [u8], HypercallError> {
    // A longer one is no label; refuse it without reading it.
    guest.buffer(call, gpa, len.min(jitsu_abi::conduit::LABEL_MAX as u64 + 1))
}

fn ret_of(result: Result<(), CallError>) -> u64 {
    match result {
        Ok(()) => hc::RET_OK,
        Err(CallError::Invalid) => hc::RET_INVALID,
        Err(CallError::Denied) => hc::RET_DENIED,
        Err(CallError::Busy) => hc::RET_BUSY,
    }
}

fn conduit_listen(
    guest: &mut Guest,
    gpa: u64,
    conduit: Option<&mut ConduitDevice>,
) -> Result<Action, HypercallError> {
    let mut arg: ConduitListen = guest.arg("conduit_listen", gpa)?;
    let name = label(guest, "conduit_listen", arg.name, arg.name_len)?.to_vec();
    arg.ret = match conduit {
        None => hc::RET_NO_DEVICE,
        Some(conduit) => ret_of(conduit.listen(guest.vm, &name)),
    };
    guest.reply("conduit_listen", gpa, &arg)?;
    Ok(Action::Resume)
}

fn conduit_connect(
    guest: &mut Guest,
    gpa: u64,
    conduit: Option<&mut ConduitDevice>,
) -> Result<Action, HypercallError> {
    let mut arg: ConduitConnect = guest.arg("conduit_connect", gpa)?;
    let server = label(guest, "conduit_connect", arg.name, arg.name_len)?.to_vec();
    let port = label(guest, "conduit_connect", arg.port, arg.port_len)?.to_vec();
    (arg.slot, arg.ret) = match conduit {
        None => (0, hc::RET_NO_DEVICE),
        Some(conduit) => match conduit.connect(&server, &port, arg.orders) {
            Ok(slot) => (slot as u64, hc::RET_OK),
            Err(e) => (0, ret_of(Err(e))),
        },
    };
    guest.reply("conduit_connect", gpa, &arg)?;
    Ok(Action::Resume)
}

fn conduit_events(
    guest: &mut Guest,
    gpa: u64,
    conduit: Option<&mut ConduitDevice>,
) -> Result<Action, HypercallError> {
    let mut arg: ConduitEvents = guest.arg("conduit_events", gpa)?;
    let room =
        (arg.len as usize / size_of::<ConduitEvent>()).min(jitsu_abi::conduit::SLOTS as usize);
    let bytes = (room * size_of::<ConduitEvent>()) as u64;
    // Checked before anything is taken: a bad buffer loses no event.
    guest.buffer_mut("conduit_events", arg.data, bytes)?;
    (arg.count, arg.ret) = match conduit {
        None => (0, hc::RET_NO_DEVICE),
        Some(conduit) => {
            let mut events = vec![ConduitEvent::default(); room];
            let n = conduit.take_events(guest.vm, &mut events);
            for (i, event) in events[..n].iter().enumerate() {
                let at = arg.data + (i * size_of::<ConduitEvent>()) as u64;
                guest.reply("conduit_events", at, event)?;
            }
            (n as u64, hc::RET_OK)
        }
    };
    guest.reply("conduit_events", gpa, &arg)?;
    Ok(Action::Resume)
}

fn conduit_close(
    guest: &mut Guest,
    gpa: u64,
    conduit: Option<&mut ConduitDevice>,
) -> Result<Action, HypercallError> {
    let mut arg: ConduitClose = guest.arg("conduit_close", gpa)?;
    arg.ret = match conduit {
        None => hc::RET_NO_DEVICE,
        Some(conduit) => ret_of(conduit.close(guest.vm, arg.slot)),
    };
    guest.reply("conduit_close", gpa, &arg)?;
    Ok(Action::Resume)
}
