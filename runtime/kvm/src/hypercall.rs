//! Serving hypercalls. Every guest address and length is checked against
//! the access map before the monitor reads or writes guest memory; a bad one
//! ends the guest with an error, never the monitor.

use std::os::fd::AsFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jitsu_abi::hypercall as hc;
use jitsu_abi::{ConsoleWrite, Halt, NetIo, Poll, Walltime};
use nix::poll::{PollFd, PollFlags};
use nix::sys::time::TimeSpec;
use thiserror::Error;

use std::sync::Arc;

use crate::devices::console::Console;
use crate::devices::net::NetDevice;
use crate::layout::AccessMap;
use crate::memory::{GuestMemory, Plain};
use crate::stop::StopSignal;

/// What the guest did wrong; the monitor stops it and reports this.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HypercallError {
    #[error("unknown hypercall port {port:#x}")]
    UnknownCall { port: u16 },
    #[error("hypercall {call}: argument must be written with a 32-bit `out`, got {size} bytes")]
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
    /// Wakes the poll hypercall when the monitor is asked to stop the guest.
    pub stop: Arc<StopSignal>,
}

pub fn name(nr: u16) -> &'static str {
    match nr {
        hc::WALLTIME => "walltime",
        hc::CONSOLE_WRITE => "console_write",
        hc::POLL => "poll",
        hc::NET_WRITE => "net_write",
        hc::NET_READ => "net_read",
        hc::HALT => "halt",
        _ => "unknown",
    }
}

/// The guest memory and what the guest may reach of it.
pub struct Guest<'a> {
    pub mem: &'a mut GuestMemory,
    pub access: &'a AccessMap,
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

/// Serves the hypercall on `port` whose `out` carried `data`.
pub fn dispatch(
    port: u16,
    data: &[u8],
    guest: &mut Guest,
    devices: &mut Devices,
) -> Result<Action, HypercallError> {
    let nr = port.wrapping_sub(hc::PORT_BASE);
    if nr >= hc::COUNT {
        return Err(HypercallError::UnknownCall { port });
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
        hc::POLL => poll(guest, gpa, devices.net.as_ref(), &devices.stop),
        hc::NET_WRITE => net_write(guest, gpa, devices.net.as_mut()),
        hc::NET_READ => net_read(guest, gpa, devices.net.as_mut()),
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

fn poll(
    guest: &mut Guest,
    gpa: u64,
    net: Option<&NetDevice>,
    stop: &StopSignal,
) -> Result<Action, HypercallError> {
    let mut arg: Poll = guest.arg("poll", gpa)?;
    if net.is_some_and(NetDevice::has_pending) {
        arg.ready = hc::READY_NET;
        arg.ret = hc::RET_OK;
        guest.reply("poll", gpa, &arg)?;
        return Ok(Action::Resume);
    }
    let timeout = (arg.timeout_nanos != u64::MAX)
        .then(|| TimeSpec::from_duration(Duration::from_nanos(arg.timeout_nanos)));
    // The stop eventfd first, the NIC (if any) second.
    let stop_fd = PollFd::new(stop.fd(), PollFlags::POLLIN);
    let (mut both, mut one);
    let fds: &mut [PollFd] = match net {
        Some(net) => {
            both = [
                stop_fd,
                PollFd::new(net.tap().file().as_fd(), PollFlags::POLLIN),
            ];
            &mut both
        }
        None => {
            one = [stop_fd];
            &mut one
        }
    };
    arg.ready = 0;
    arg.ret = match nix::poll::ppoll(fds, timeout, None) {
        Ok(_) | Err(nix::Error::EINTR) => hc::RET_OK,
        Err(_) => hc::RET_IO_ERROR,
    };
    let net_ready = fds.get(1).and_then(PollFd::revents);
    if net_ready.is_some_and(|r| r.contains(PollFlags::POLLIN)) {
        arg.ready |= hc::READY_NET;
    }
    guest.reply("poll", gpa, &arg)?;
    Ok(Action::Resume)
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
