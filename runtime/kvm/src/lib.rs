//! Jitsu's KVM backend: validates a unikernel ELF, builds a KVM VM for it
//! from the host side (page tables and the vCPU's entry state: CPL 3 long
//! mode on x86-64, EL1 with the MMU on on arm64), serves its hypercalls on a
//! seccomp-confined vCPU thread, and moves its frames to and from a TAP.
//! The ABI it implements is described in `ABI.md` beside this crate; what
//! differs between x86-64 and arm64 is in `arch/`. [`KvmBackend`] is how
//! the supervisor drives it.

pub mod arch;
pub mod boot_clock;
pub mod boot_info;
pub mod devices;
pub mod elf;
pub mod hypercall;
pub mod kernel_file;
pub mod layout;
pub mod memory;
pub mod report;
pub mod seccomp;
pub mod stop;
mod vcpu;
pub mod vm;

use std::sync::Arc;
use std::time::Instant;

use jitsu_runtime::tap::Tap;
use jitsu_runtime::{Backend, FramePort};
use kernel_file::KernelFile;

pub use report::{Outcome, RunReport, Timings};
pub use vm::{open_kvm, NetSetup, ParkedVm, RunningVm, Vm, VmConfig, VmError};

/// One unikernel ELF, parked again and again in fresh VMs on one TAP.
pub struct KvmBackend {
    kernel: KernelFile,
    config: VmConfig,
    tap: Arc<Tap>,
}

impl KvmBackend {
    /// Lazy boot needs the NIC: that is where the trigger arrives.
    pub fn new(kernel: KernelFile, config: VmConfig) -> Result<KvmBackend, VmError> {
        let tap = config
            .net
            .as_ref()
            .map(|n| n.tap.clone())
            .ok_or(VmError::NoNetwork)?;
        Ok(KvmBackend {
            kernel,
            config,
            tap,
        })
    }
}

impl Backend for KvmBackend {
    type Parked = ParkedVm;
    type Running = RunningVm;
    type Report = RunReport;
    type Error = VmError;

    /// The ELF is mapped only while the VM is built: between parkings the
    /// monitor holds no copy of it.
    fn prepare(&mut self) -> Result<ParkedVm, VmError> {
        let kernel = self.kernel.map()?;
        Vm::create(&kernel, &self.config, Instant::now())?.park()
    }

    fn hypervisor(&self) -> &'static str {
        "kvm"
    }

    fn frames(&self) -> &dyn FramePort {
        &*self.tap
    }

    fn console_dropped_bytes(&self) -> u64 {
        devices::console::Console::stdout().dropped_bytes()
    }

    fn frames_refused(&self) -> u64 {
        let net = self.config.net.as_ref();
        net.map_or(0, |n| n.refused.load(std::sync::atomic::Ordering::Relaxed))
    }
}
