//! The vCPU thread's loop: run guest code, serve its exits, until it halts,
//! faults, breaks the ABI or is asked to stop.

use std::time::Duration;

use jitsu_abi::BootInfo;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

use crate::cpu;
use crate::hypercall::{self, Action, Devices, Guest};
use crate::layout::AccessMap;
use crate::memory::GuestMemory;
use crate::report::Outcome;

/// Everything the vCPU thread owns. Field order is drop order: the vCPU and
/// VM go before the memory they map.
pub(crate) struct VcpuState {
    pub vcpu: VcpuFd,
    pub _vm: VmFd,
    pub _kvm: Kvm,
    pub mem: GuestMemory,
    pub access: AccessMap,
    pub devices: Devices,
    pub tsc_khz: u32,
}

/// Runs the guest until it halts or faults. Returns the outcome and whether
/// it exited at least once (so that its entry TSC has been recorded).
pub(crate) fn vcpu_loop(state: &mut VcpuState) -> (Outcome, bool) {
    let mut exited = false;
    loop {
        if state.devices.stop.requested() {
            return (Outcome::Stopped, exited);
        }
        let exit = state.vcpu.run();
        let crashed = |reason: String, vcpu: &VcpuFd| Outcome::Crashed {
            reason,
            registers: cpu::crash_state(vcpu),
        };
        match exit {
            Ok(VcpuExit::IoOut(port, data)) => {
                exited = true;
                let mut buf = [0u8; 8];
                let len = data.len().min(8);
                buf[..len].copy_from_slice(&data[..len]);
                let mut guest = Guest {
                    mem: &mut state.mem,
                    access: &state.access,
                };
                match hypercall::dispatch(port, &buf[..len], &mut guest, &mut state.devices) {
                    Ok(Action::Resume) => continue,
                    Ok(Action::Halt(status)) => return (Outcome::Halted(status), exited),
                    Err(violation) => return (Outcome::Violation(violation), exited),
                }
            }
            Ok(VcpuExit::Shutdown) => {
                return (
                    crashed(
                        "triple fault (an exception with no handler)".into(),
                        &state.vcpu,
                    ),
                    exited,
                )
            }
            Ok(VcpuExit::IoIn(port, _)) => {
                let reason = format!("read from I/O port {port:#x}, which the ABI does not define");
                return (crashed(reason, &state.vcpu), exited);
            }
            Ok(VcpuExit::MmioRead(addr, _)) | Ok(VcpuExit::MmioWrite(addr, _)) => {
                let reason =
                    format!("access to guest-physical address {addr:#x}, outside guest memory");
                return (crashed(reason, &state.vcpu), exited);
            }
            Ok(VcpuExit::Intr) => continue,
            Ok(other) => {
                let reason = format!("unexpected VM exit: {other:?}");
                return (crashed(reason, &state.vcpu), exited);
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => return (crashed(format!("KVM_RUN failed: {e}"), &state.vcpu), exited),
        }
    }
}

/// Converts the guest's entry TSC into a time since `start`.
pub(crate) fn first_instruction(
    state: &VcpuState,
    tsc_before: Option<u64>,
    exited: bool,
    run: Duration,
) -> Option<Duration> {
    if !exited || state.tsc_khz == 0 {
        return None;
    }
    let info: BootInfo = state.mem.read(jitsu_abi::layout::BOOT_INFO_ADDR).ok()?;
    let ticks = info.entry_tsc.checked_sub(tsc_before?)?;
    let micros = ticks.checked_mul(1000)? / state.tsc_khz as u64;
    // A guest can write anything there; ignore a value no real boot produces.
    (micros < 60_000_000).then(|| run + Duration::from_micros(micros))
}
