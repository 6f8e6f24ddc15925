//! The vCPU thread's loop: run guest code, serve its exits, until it halts,
//! faults, breaks the ABI or is asked to stop.

use std::sync::Arc;

use jitsu_abi::BootInfo;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use crate::arch::{self, Exit};
use crate::boot_clock::BootClock;
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
    pub counter_khz: u32,
    pub clock: Arc<BootClock>,
}

/// Runs the guest until it halts, faults or is stopped. At the first exit
/// the guest has recorded its entry counter, which times its first
/// instruction.
pub(crate) fn vcpu_loop(state: &mut VcpuState) -> Outcome {
    let mut exited = false;
    loop {
        let stop = state.devices.stop.clone();
        if stop.should_stop(|d| state.devices.quiet_for(d)) {
            return Outcome::Stopped;
        }
        let exit = match state.vcpu.run() {
            Ok(exit) => arch::exit::decode(exit),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Again,
            Err(e) => arch::exit::run_failed(e),
        };
        match exit {
            Exit::Hypercall { nr, data, len } => {
                if !exited {
                    exited = true;
                    record_first_instruction(&state.mem, &state.clock, state.counter_khz);
                }
                let mut guest = Guest {
                    mem: &mut state.mem,
                    access: &state.access,
                    vm: &state._vm,
                };
                match hypercall::dispatch(nr, &data[..len], &mut guest, &mut state.devices) {
                    Ok(Action::Resume) => continue,
                    Ok(Action::Halt(status)) => return Outcome::Halted(status),
                    Err(violation) => return Outcome::Violation(violation),
                }
            }
            Exit::Again => continue,
            Exit::Crash(reason) => {
                return Outcome::Crashed {
                    reason,
                    registers: arch::vcpu::crash_state(&state.vcpu),
                }
            }
        }
    }
}

fn record_first_instruction(mem: &GuestMemory, clock: &BootClock, counter_khz: u32) {
    let exit_ns = clock::now_ns();
    let entry_counter = mem
        .read::<BootInfo>(jitsu_abi::layout::BOOT_INFO_ADDR)
        .map_or(0, |info| info.entry_counter);
    clock.record_entry(entry_counter, counter_khz, exit_ns);
}
