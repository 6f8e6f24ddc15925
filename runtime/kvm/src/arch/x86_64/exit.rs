//! x86-64 exits: an `out` to a hypercall port is a call; anything else
//! that reaches the monitor ends the guest.

use jitsu_abi::hypercall::PORT_BASE;
use kvm_ioctls::VcpuExit;

use crate::arch::Exit;

pub fn decode(exit: VcpuExit<'_>) -> Exit {
    match exit {
        VcpuExit::IoOut(port, bytes) => {
            let mut data = [0u8; 8];
            let len = bytes.len().min(8);
            data[..len].copy_from_slice(&bytes[..len]);
            let nr = port.wrapping_sub(PORT_BASE);
            Exit::Hypercall { nr, data, len }
        }
        VcpuExit::Intr => Exit::Again,
        VcpuExit::Shutdown => Exit::Crash("triple fault (an exception with no handler)".into()),
        VcpuExit::IoIn(port, _) => Exit::Crash(format!(
            "read from I/O port {port:#x}, which the ABI does not define"
        )),
        VcpuExit::MmioRead(addr, _) | VcpuExit::MmioWrite(addr, _) => Exit::Crash(format!(
            "access to guest-physical address {addr:#x}, outside guest memory"
        )),
        other => Exit::Crash(format!("unexpected VM exit: {other:?}")),
    }
}

/// `KVM_RUN` refused to go on.
pub fn run_failed(e: kvm_ioctls::Error) -> Exit {
    Exit::Crash(format!("KVM_RUN failed: {e}"))
}
