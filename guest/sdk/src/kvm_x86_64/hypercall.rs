//! Hypercalls: an `out` to the call's port with the argument structure's
//! guest-physical address in EAX. Guest memory is identity-mapped below
//! 4 GiB, so a pointer to a live structure is its guest-physical address.

use core::arch::asm;

use jitsu_abi::hypercall::{self as hc, PORT_BASE};
use jitsu_abi::{ConsoleWrite, Halt, NetIo, Poll, Walltime};

/// Issues hypercall `nr` with `arg`, which the monitor may read and write.
fn call<T>(nr: u16, arg: &mut T) {
    let addr = arg as *mut T as u64;
    debug_assert!(addr <= u32::MAX as u64);
    // SAFETY: `out` to our ports exits to the monitor, which reads and writes
    // only `arg` and the buffers it names; they are borrowed for this call,
    // and the asm has no `nomem` so the compiler reloads them afterwards.
    unsafe {
        asm!("out dx, eax", in("dx") PORT_BASE + nr, in("eax") addr as u32,
            options(nostack, preserves_flags));
    }
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
        // SAFETY: ud2 raises #UD, which ends the guest; it touches nothing.
        unsafe { asm!("ud2", options(nomem, nostack)) };
    }
}

/// Issues a raw hypercall with an arbitrary argument address, for tests of
/// the monitor's checks. Real guests never need this.
pub fn raw(nr: u16, addr: u32) {
    // SAFETY: the monitor validates `addr`; a bad one ends the guest, it
    // cannot make the monitor touch memory on the guest's behalf.
    unsafe {
        asm!("out dx, eax", in("dx") PORT_BASE + nr, in("eax") addr,
            options(nostack, preserves_flags));
    }
}
