//! The vCPU thread's loop: run guest code, serve its exits, until it halts,
//! faults, breaks the ABI or is asked to stop.

use std::sync::Arc;

use jitsu_abi::BootInfo;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};

use crate::boot_clock::BootClock;
use crate::cpu;
use crate::hypercall::{self, Action, Devices, Guest};
use crate::layout::AccessMap;
use crate::memory::GuestMemory;
use crate::report::Outcome;
use jitsu_runtime::clock;

/// Everything the vCPU thread owns. Field order is drop order: the vCPU and
/// VM go before the memory they map.
pub(crate) struct VcpuState {
    pub vcpu: VcpuFd,
    pub _vm: VmFd,
    pub _kvm: std::sync::Arc<Kvm>,
    pub mem: GuestMemory,
    pub access: AccessMap,
    pub devices: Devices,
    pub tsc_khz: u32,
    pub clock: Arc<BootClock>,
}

/// Runs the guest until it halts, faults or is stopped. At the first exit
/// the guest has recorded its entry TSC, which times its first instruction.
pub(crate) fn vcpu_loop(state: &mut VcpuState) -> Outcome {
    let mut exited = false;
    loop {
        let stop = state.devices.stop.clone();
        if stop.should_stop(|d| state.devices.quiet_for(d)) {
            return Outcome::Stopped;
        }
        let exit = state.vcpu.run();
        let crashed = |reason: String, vcpu: &VcpuFd| Outcome::Crashed {
            reason,
            registers: cpu::crash_state(vcpu),
        };
        match exit {
            Ok(VcpuExit::IoOut(port, data)) => {
                if !exited {
                    exited = true;
                    record_first_instruction(&state.mem, &state.clock, state.tsc_khz);
                }
                let mut buf = [0u8; 8];
                let len = data.len().min(8);
                buf[..len].copy_from_slice(&data[..len]);
                let mut guest = Guest {
                    mem: &mut state.mem,
                    access: &state.access,
                    vm: &state._vm,
                };
                match hypercall::dispatch(port, &buf[..len], &mut guest, &mut state.devices) {
                    Ok(Action::Resume) => continue,
                    Ok(Action::Halt(status)) => return Outcome::Halted(status),
                    Err(violation) => return Outcome::Violation(violation),
                }
            }
            Ok(VcpuExit::Shutdown) => {
                let reason = "triple fault (an exception with no handler)".into();
                return crashed(reason, &state.vcpu);
            }
            Ok(VcpuExit::IoIn(port, _)) => {
                let reason = format!("read from I/O port {port:#x}, which the ABI does not define");
                return crashed(reason, &state.vcpu);
            }
            Ok(VcpuExit::MmioRead(addr, _)) | Ok(VcpuExit::MmioWrite(addr, _)) => {
                let reason =
                    format!("access to guest-physical address {addr:#x}, outside guest memory");
                return crashed(reason, &state.vcpu);
            }
            Ok(VcpuExit::Intr) => continue,
            Ok(other) => {
                let reason = format!("unexpected VM exit: {other:?}");
                return crashed(reason, &state.vcpu);
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => return crashed(format!("KVM_RUN failed: {e}"), &state.vcpu),
        }
    }
}

fn record_first_instruction(mem: &GuestMemory, clock: &BootClock, tsc_khz: u32) {
    let exit_ns = clock::now_ns();
    let entry_tsc = mem
        .read::<BootInfo>(jitsu_abi::layout::BOOT_INFO_ADDR)
        .map_or(0, |info| info.entry_tsc);
    clock.record_entry(entry_tsc, tsc_khz, exit_ns);
}
