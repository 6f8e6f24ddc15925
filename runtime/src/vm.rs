//! A unikernel VM: built up to the last step by [`Vm::create`], run to its
//! end by [`Vm::run`] on a confined vCPU thread.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::thread::JoinHandleExt;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::Kvm;
use thiserror::Error;

use crate::boot_info::{self, BootParams, GuestNet};
use crate::cpu;
use crate::devices::console::Console;
use crate::devices::net::NetDevice;
use crate::devices::tap::{Tap, TapError};
use crate::elf::{ElfError, KernelImage};
use crate::hypercall::Devices;
use crate::layout::{self, LayoutError};
use crate::memory::{GuestMemory, MemoryError};
use crate::report::{RunReport, Timings};
use crate::seccomp::{self, SeccompError, VcpuFds};
use crate::stop::{self, StopSignal};
use crate::vcpu::{first_instruction, vcpu_loop, VcpuState};
use nix::sys::eventfd::{EfdFlags, EventFd};

#[derive(Debug, Error)]
pub enum VmError {
    #[error(
        "memory size {0} is not valid: it must be a multiple of 2 MiB between 2 MiB and 4 GiB"
    )]
    BadMemorySize(u64),
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error("cannot open /dev/kvm: {0} (is KVM available, and may this user use it?)")]
    KvmOpen(kvm_ioctls::Error),
    #[error("KVM {what} failed: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    BootInfo(#[from] boot_info::WriteError),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("cannot start the vCPU thread: {0}")]
    Thread(std::io::Error),
    #[error("the vCPU thread died")]
    ThreadDied,
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// The guest's network: which TAP, and the identity to give the guest.
#[derive(Debug, Clone)]
pub struct NetSetup {
    pub tap: String,
    pub mac: [u8; 6],
    pub ipv4: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub mem_size: u64,
    pub cmdline: String,
    pub net: Option<NetSetup>,
}

pub struct Vm {
    state: VcpuState,
    timings: Timings,
}

impl Vm {
    /// Validates the kernel, creates the VM, loads the image and opens the
    /// devices. No guest instruction runs.
    pub fn create(kernel: &[u8], config: &VmConfig, start: Instant) -> Result<Vm, VmError> {
        let mut timings = Timings::new(start);
        let mem_size = config.mem_size;
        let limits = jitsu_abi::layout::MEM_MIN..=jitsu_abi::layout::MEM_MAX;
        if mem_size % jitsu_abi::layout::MEM_ALIGN != 0 || !limits.contains(&mem_size) {
            return Err(VmError::BadMemorySize(mem_size));
        }
        boot_info::check_cmdline(&config.cmdline).map_err(boot_info::WriteError::from)?;
        let t = Instant::now();
        let image = KernelImage::parse(kernel, mem_size)?;
        let parse = t.elapsed();

        let t = Instant::now();
        let kvm = Kvm::new().map_err(VmError::KvmOpen)?;
        let vm = kvm.create_vm().map_err(kvm_err("create VM"))?;
        let mut mem = GuestMemory::new(mem_size)?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: mem_size,
            userspace_addr: mem.host_address(),
            flags: 0,
        };
        // SAFETY: the region is our own anonymous mapping of `mem_size` bytes;
        // it outlives the VM (VcpuState drops the VM first).
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("set memory region"))?;
        let vcpu = vm.create_vcpu(0).map_err(kvm_err("create vCPU"))?;
        cpu::set_cpuid(&kvm, &vcpu).map_err(kvm_err("set CPUID"))?;
        let tsc_khz = vcpu.get_tsc_khz().map_err(kvm_err("get TSC frequency"))?;
        timings.vm_create = t.elapsed();

        let t = Instant::now();
        let tap = config.net.as_ref().map(|n| Tap::open(&n.tap)).transpose()?;
        image.load(kernel, &mut mem)?;
        let access = layout::build(&mut mem, &image)?;
        let net = config
            .net
            .as_ref()
            .zip(tap.as_ref())
            .map(|(n, tap)| GuestNet {
                mac: n.mac,
                ipv4: n.ipv4,
                prefix_len: n.prefix_len,
                gateway: n.gateway,
                mtu: tap.mtu(),
            });
        let params = BootParams {
            image_end: image.end(),
            tsc_hz: tsc_khz as u64 * 1000,
            walltime_nanos: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            cmdline: &config.cmdline,
            net,
        };
        let boot_info = boot_info::write(&mut mem, &params)?;
        cpu::set_registers(&vcpu, image.entry, mem_size, boot_info)
            .map_err(kvm_err("set registers"))?;
        timings.load = parse + t.elapsed();

        let stop = Arc::new(StopSignal::new().map_err(VmError::Thread)?);
        let devices = Devices {
            console: Console::stdout(),
            net: tap.map(NetDevice::new),
            stop,
        };
        let state = VcpuState {
            vcpu,
            _vm: vm,
            _kvm: kvm,
            mem,
            access,
            devices,
            tsc_khz,
        };
        Ok(Vm { state, timings })
    }

    /// Runs the guest to its end on a vCPU thread confined by seccomp.
    pub fn run(self) -> Result<RunReport, VmError> {
        self.start()?.wait()
    }

    /// Starts the guest on a vCPU thread confined by seccomp and returns at once.
    pub fn start(self) -> Result<RunningVm, VmError> {
        let done = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(|e| VmError::Thread(e.into()))?,
        );
        let fds = VcpuFds {
            vcpu: self.state.vcpu.as_raw_fd(),
            console: self.state.devices.console.raw_fd(),
            tap: self
                .state
                .devices
                .net
                .as_ref()
                .map(|n| n.tap().file().as_raw_fd()),
            done: done.as_fd().as_raw_fd(),
        };
        let filter = seccomp::vcpu_filter(&fds)?;
        stop::install_kick_handler();
        let stop = self.state.devices.stop.clone();
        let mut timings = self.timings;
        let mut state = self.state;
        let thread_done = done.clone();
        let handle = thread::Builder::new()
            .name("vcpu0".into())
            .spawn(move || {
                let tsc_before = cpu::guest_tsc(&state.vcpu);
                timings.run = timings.start.elapsed();
                let applied = seccomp::apply(&filter);
                let result = applied.map_err(VmError::from).map(|()| {
                    let (outcome, first_exit) = vcpu_loop(&mut state);
                    timings.exit = timings.start.elapsed();
                    timings.first_instruction =
                        first_instruction(&state, tsc_before, first_exit, timings.run);
                    let net = state.devices.net.as_ref().map(|n| n.stats);
                    RunReport {
                        outcome,
                        timings,
                        net,
                    }
                });
                let _ = thread_done.write(1);
                // The state goes back to the caller's thread: closing its
                // descriptors is not on this thread's allowlist.
                (result, state)
            })
            .map_err(VmError::Thread)?;
        Ok(RunningVm { handle, stop, done })
    }
}

/// A guest running on its vCPU thread.
pub struct RunningVm {
    handle: thread::JoinHandle<(Result<RunReport, VmError>, VcpuState)>,
    stop: Arc<StopSignal>,
    done: Arc<EventFd>,
}

impl RunningVm {
    /// Readable once the guest has ended (to wait for it alongside other events).
    pub fn done_fd(&self) -> BorrowedFd<'_> {
        self.done.as_fd()
    }

    /// Waits for the guest to end by itself.
    pub fn wait(self) -> Result<RunReport, VmError> {
        let (result, state) = self.handle.join().map_err(|_| VmError::ThreadDied)?;
        drop(state);
        result
    }

    /// Stops the guest wherever it is and waits for the vCPU thread.
    pub fn stop(self) -> Result<RunReport, VmError> {
        self.stop.request();
        while !self.handle.is_finished() {
            stop::kick(self.handle.as_pthread_t());
            thread::sleep(Duration::from_millis(1));
        }
        self.wait()
    }
}
