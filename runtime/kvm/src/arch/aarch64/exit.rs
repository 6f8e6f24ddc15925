//! arm64 exits: a store to the hypercall page is a call, a store from the
//! monitor's vectors an exception; anything else that reaches the monitor
//! ends the guest.

use jitsu_abi::hypercall::{MMIO_BASE, MMIO_EXCEPTION, MMIO_STRIDE, PORT_WINDOW};
use kvm_ioctls::VcpuExit;

use crate::arch::Exit;

const CALLS_END: u64 = MMIO_BASE + PORT_WINDOW as u64 * MMIO_STRIDE;
const VECTORS: u64 = 16;

pub fn decode(exit: VcpuExit<'_>) -> Exit {
    match exit {
        VcpuExit::MmioWrite(addr, bytes) if (MMIO_BASE..CALLS_END).contains(&addr) => {
            let offset = addr - MMIO_BASE;
            if offset % MMIO_STRIDE != 0 {
                return Exit::Crash(format!(
                    "store to the hypercall page at {addr:#x}, between two calls"
                ));
            }
            let mut data = [0u8; 8];
            let len = bytes.len().min(8);
            data[..len].copy_from_slice(&bytes[..len]);
            let nr = (offset / MMIO_STRIDE) as u16;
            Exit::Hypercall { nr, data, len }
        }
        VcpuExit::MmioWrite(addr, _)
            if (MMIO_EXCEPTION..MMIO_EXCEPTION + VECTORS * 8).contains(&addr) =>
        {
            Exit::Crash(exception((addr - MMIO_EXCEPTION) / 8))
        }
        VcpuExit::MmioRead(addr, _) | VcpuExit::MmioWrite(addr, _) => Exit::Crash(format!(
            "access to guest-physical address {addr:#x}, outside guest memory and the hypercalls"
        )),
        VcpuExit::Intr => Exit::Again,
        VcpuExit::SystemEvent(kind, _) => Exit::Crash(format!(
            "the guest asked for system event {kind} (PSCI), which the ABI does not offer"
        )),
        other => Exit::Crash(format!("unexpected VM exit: {other:?}")),
    }
}

/// `KVM_RUN` refused to go on. ENOSYS is KVM's answer to a guest access
/// outside memory that it cannot hand to the monitor: an access whose
/// syndrome does not describe it (a store with writeback, a pair), which
/// only the plain `str` the ABI asks for avoids.
pub fn run_failed(e: kvm_ioctls::Error) -> Exit {
    if e.errno() == libc::ENOSYS {
        return Exit::Crash(
            "the guest accessed device memory (the hypercall page) with an instruction \
             KVM cannot emulate (writeback or pair): use a plain 32-bit str"
                .to_string(),
        );
    }
    Exit::Crash(format!("KVM_RUN failed: {e}"))
}

/// Which vector took the exception: its kind, and where it came from.
fn exception(vector: u64) -> String {
    let kind = ["synchronous exception", "IRQ", "FIQ", "SError"][(vector % 4) as usize];
    let from = [
        "at EL1 on SP_EL0",
        "at EL1",
        "from EL0 (AArch64)",
        "from EL0 (AArch32)",
    ][(vector / 4) as usize];
    format!("{kind} {from} (the registers say which)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_to_the_hypercall_page_are_calls_by_their_address() {
        let exit = decode(VcpuExit::MmioWrite(
            MMIO_BASE + 3 * MMIO_STRIDE,
            &[1, 2, 3, 4],
        ));
        let mut data = [0u8; 8];
        data[..4].copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            exit,
            Exit::Hypercall {
                nr: 3,
                data,
                len: 4
            }
        );
        let last = MMIO_BASE + (PORT_WINDOW as u64 - 1) * MMIO_STRIDE;
        assert!(matches!(
            decode(VcpuExit::MmioWrite(last, &[0; 8])),
            Exit::Hypercall { nr: 15, len: 8, .. }
        ));
    }

    #[test]
    fn other_accesses_end_the_guest_with_a_reason() {
        let crash = |exit| match decode(exit) {
            Exit::Crash(reason) => reason,
            other => panic!("{other:?}"),
        };
        assert!(crash(VcpuExit::MmioWrite(MMIO_BASE + 1, &[0; 4])).contains("between two calls"));
        assert!(crash(VcpuExit::MmioWrite(CALLS_END, &[0; 4])).contains("outside guest memory"));
        let mut buf = [0u8; 4];
        assert!(crash(VcpuExit::MmioRead(MMIO_BASE, &mut buf)).contains("outside guest memory"));
        let sync = crash(VcpuExit::MmioWrite(MMIO_EXCEPTION + 4 * 8, &[0; 4]));
        assert!(sync.starts_with("synchronous exception at EL1 "), "{sync}");
        let serror = crash(VcpuExit::MmioWrite(MMIO_EXCEPTION + 15 * 8, &[0; 4]));
        assert!(serror.starts_with("SError from EL0 (AArch32)"), "{serror}");
        assert_eq!(decode(VcpuExit::Intr), Exit::Again);
    }
}
