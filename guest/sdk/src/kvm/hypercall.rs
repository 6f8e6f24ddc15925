//! Hypercalls: the argument structure's guest-physical address handed to
//! the monitor through the architecture's trap (`arch::trap`). Guest memory
//! is identity-mapped below 4 GiB, so a pointer to a live structure is its
//! guest-physical address, and it fits the trap's 32 bits.

use jitsu_abi::hypercall as hc;
use jitsu_abi::{
    ConduitClose, ConduitConnect, ConduitEvent, ConduitEvents, ConduitListen, ConsoleWrite, Halt,
    NetIo, Poll, SignalPoll, Walltime,
};

use super::arch;

/// Issues hypercall `nr` with `arg`, which the monitor may read and write.
fn call<T>(nr: u16, arg: &mut T) {
    let addr = arg as *mut T as u64;
    debug_assert!(addr <= u32::MAX as u64);
    // SAFETY: the trap exits to the monitor, which reads and writes only
    // `arg` and the buffers it names; they are borrowed for this call, and
    // the trap is not `nomem`, so the compiler reloads them afterwards.
    unsafe { arch::trap(nr, addr as u32) };
}

/// Nanoseconds since the Unix epoch, from the host.
pub fn walltime() -> u64 {
    let mut arg = Walltime::default();
    call(hc::WALLTIME, &mut arg);
    arg.nanos
}

pub fn console_write(bytes: &[u8]) {
    let mut arg = ConsoleWrite {
        data: bytes.as_ptr() as u64,
        len: bytes.len() as u64,
        ret: 0,
    };
    call(hc::CONSOLE_WRITE, &mut arg);
}

/// Blocks until a device has input or `timeout_nanos` passed (`u64::MAX`:
/// no deadline). Returns the `READY_*` bits.
pub fn poll(timeout_nanos: u64) -> u64 {
    let mut arg = Poll {
        timeout_nanos,
        ..Poll::default()
    };
    call(hc::POLL, &mut arg);
    arg.ready
}

/// Signals the peers of the conduit slots in `signal`, then blocks as
/// [`poll`] does. Returns (`READY_*` bits, the slots whose peers signalled).
pub fn signal_poll(signal: u64, timeout_nanos: u64) -> (u64, u64) {
    let mut arg = SignalPoll {
        signal,
        timeout_nanos,
        ..SignalPoll::default()
    };
    call(hc::SIGNAL_POLL, &mut arg);
    (arg.ready, arg.signalled)
}

/// Listens under `name`; the `RET_*` code.
pub fn conduit_listen(name: &str) -> u64 {
    let mut arg = ConduitListen {
        name: name.as_ptr() as u64,
        name_len: name.len() as u64,
        ret: 0,
    };
    call(hc::CONDUIT_LISTEN, &mut arg);
    arg.ret
}

/// Asks for a channel to `name` on `port`: the slot, or the `RET_*` code.
pub fn conduit_connect(name: &str, port: &str, orders: u64) -> Result<u32, u64> {
    let mut arg = ConduitConnect {
        name: name.as_ptr() as u64,
        name_len: name.len() as u64,
        port: port.as_ptr() as u64,
        port_len: port.len() as u64,
        orders,
        ..ConduitConnect::default()
    };
    call(hc::CONDUIT_CONNECT, &mut arg);
    match arg.ret {
        hc::RET_OK => Ok(arg.slot as u32),
        ret => Err(ret),
    }
}

/// Fills `out` with waiting conduit events; how many.
pub fn conduit_events(out: &mut [ConduitEvent]) -> usize {
    let mut arg = ConduitEvents {
        data: out.as_mut_ptr() as u64,
        len: core::mem::size_of_val(out) as u64,
        ..ConduitEvents::default()
    };
    call(hc::CONDUIT_EVENTS, &mut arg);
    (arg.count as usize).min(out.len())
}

pub fn conduit_close(slot: u32) -> u64 {
    let mut arg = ConduitClose {
        slot: slot as u64,
        ret: 0,
    };
    call(hc::CONDUIT_CLOSE, &mut arg);
    arg.ret
}

/// Outcome of a batched network call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetResult {
    pub ret: u64,
    pub frames: u64,
    pub used: u64,
}

/// Sends the packed frames in `batch`.
pub fn net_write(batch: &[u8]) -> NetResult {
    let mut arg = NetIo {
        data: batch.as_ptr() as u64,
        len: batch.len() as u64,
        ..NetIo::default()
    };
    call(hc::NET_WRITE, &mut arg);
    NetResult {
        ret: arg.ret,
        frames: arg.frames,
        used: arg.used,
    }
}

/// Fills `buf` with as many packed frames as are waiting and fit.
pub fn net_read(buf: &mut [u8]) -> NetResult {
    let mut arg = NetIo {
        data: buf.as_mut_ptr() as u64,
        len: buf.len() as u64,
        ..NetIo::default()
    };
    call(hc::NET_READ, &mut arg);
    NetResult {
        ret: arg.ret,
        frames: arg.frames,
        used: arg.used,
    }
}

pub fn halt(status: u64) -> ! {
    let mut arg = Halt { status };
    call(hc::HALT, &mut arg);
    // The monitor never resumes a halted guest; if it did, fault loudly.
    loop {
        arch::fault();
    }
}

/// Issues a raw hypercall with an arbitrary argument address, for tests of
/// the monitor's checks. Real guests never need this.
pub fn raw(nr: u16, addr: u32) {
    // SAFETY: the monitor validates `addr`; a bad one ends the guest, it
    // cannot make the monitor touch memory on the guest's behalf.
    unsafe { arch::trap(nr, addr) };
}

/// Raises an exception on purpose (an undefined instruction): the monitor
/// ends the guest and reports it as a crash.
pub fn fault() -> ! {
    loop {
        arch::fault();
    }
}
