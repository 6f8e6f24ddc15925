//! A unikernel VM: built up to the last step by [`Vm::create`], run to its
//! end by [`Vm::run`] on a confined vCPU thread.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jitsu_runtime::{IdleStop, Parked, Running};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::Kvm;
use thiserror::Error;

use crate::arch;
use crate::boot_clock::BootClock;
use crate::boot_info::{self, BootParams, GuestNet};
use crate::devices::conduit::ConduitDevice;
use crate::devices::console::Console;
use crate::devices::net::NetDevice;
use crate::elf::{ElfError, KernelImage};
use crate::hypercall::Devices;
use crate::kernel_file::Mapping;
use crate::layout::{self, LayoutError};
use crate::memory::{GuestMemory, MemoryError};
use crate::report::{RunReport, Timings};
use crate::seccomp::{self, SeccompError, VcpuFds};
use crate::stop::{self, StopSignal};
use crate::vcpu::{vcpu_loop, VcpuState};
use jitsu_runtime::clock;
use jitsu_runtime::egress::EgressFilter;
use jitsu_runtime::tap::{Tap, TapError};
use nix::sys::eventfd::{EfdFlags, EventFd};

#[derive(Debug, Error)]
pub enum VmError {
    #[error(
        "memory size {0} is not valid: it must be a multiple of 2 MiB between 2 MiB and 4 GiB"
    )]
    BadMemorySize(u64),
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error("the unikernel: {0}")]
    KernelFile(#[from] crate::kernel_file::KernelFileError),
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
    #[error("the parked VM was discarded before it booted")]
    Cancelled,
    #[error("lazy boot needs a network device (--net TAP --ip ADDR/PREFIX)")]
    NoNetwork,
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// The guest's network: which TAP (opened once by the caller, so that VMs
/// that replace each other share it), and the identity to give the guest.
#[derive(Clone)]
pub struct NetSetup {
    pub tap: Arc<Tap>,
    pub mac: [u8; 6],
    pub ipv4: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    /// Frames refused from the guest (see [`jitsu_runtime::egress`]), over
    /// every VM of this setup.
    pub refused: Arc<AtomicU64>,
}

#[derive(Clone)]
pub struct VmConfig {
    pub mem_size: u64,
    pub cmdline: String,
    pub net: Option<NetSetup>,
    /// `/dev/kvm`, opened once (before the monitor gives up the right to
    /// open files): every VM of the monitor is created through it.
    pub kvm: Arc<Kvm>,
    /// The Conduit broker, if the guest has a Conduit name: it then gets
    /// the conduit device.
    pub conduit: Option<jitsu_conduit::BrokerHandle>,
}

/// Opens `/dev/kvm`.
pub fn open_kvm() -> Result<Arc<Kvm>, VmError> {
    Kvm::new().map(Arc::new).map_err(VmError::KvmOpen)
}

pub struct Vm {
    state: VcpuState,
    timings: Timings,
    activity: Arc<AtomicU64>,
}

impl Vm {
    /// Validates the kernel, creates the VM, loads the image and opens the
    /// devices. No guest instruction runs.
    pub fn create(kernel: &Mapping<'_>, config: &VmConfig, start: Instant) -> Result<Vm, VmError> {
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
        let kvm = config.kvm.clone();
        let vm = arch::vcpu::create_vm(&kvm).map_err(kvm_err("create VM"))?;
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
        let counter_khz = arch::vcpu::setup(&kvm, &vm, &vcpu)
            .map_err(|(what, source)| VmError::Kvm { what, source })?;
        timings.vm_create = t.elapsed();

        let t = Instant::now();
        let tap = config.net.as_ref().map(|n| n.tap.clone());
        image.load(kernel, Some(kernel.file()), &mut mem)?;
        let access = layout::build(&mut mem, &image, config.conduit.is_some())?;
        let net = config
            .net
            .as_ref()
            .zip(tap.as_ref())
            .map(|(n, tap)| GuestNet {
                mac: n.mac,
                ipv4: n.ipv4,
                prefix_len: n.prefix_len,
                gateway: n.gateway,
                mtu: tap.mtu().min(jitsu_abi::MTU_MAX),
            });
        let params = BootParams {
            image_end: image.end(),
            counter_hz: counter_khz as u64 * 1000,
            walltime_nanos: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            cmdline: &config.cmdline,
            net,
            conduit: config.conduit.as_ref().map(|c| c.name()),
        };
        let boot_info = boot_info::write(&mut mem, &params)?;
        arch::vcpu::set_registers(&vcpu, image.entry, mem_size, boot_info)
            .map_err(kvm_err("set registers"))?;
        timings.load = parse + t.elapsed();

        let stop = Arc::new(StopSignal::new().map_err(VmError::Thread)?);
        let activity = Arc::new(AtomicU64::new(clock::now_ns()));
        let egress = config.net.as_ref().map(|n| {
            let filter = EgressFilter {
                mac: n.mac,
                ipv4: n.ipv4,
            };
            (filter, n.refused.clone())
        });
        let devices = Devices {
            console: Console::stdout(),
            net: tap.zip(egress).map(|(tap, (filter, refused))| {
                NetDevice::new(tap, filter, refused, activity.clone())
            }),
            conduit: config
                .conduit
                .clone()
                .map(|broker| ConduitDevice::new(broker, activity.clone())),
            stop,
        };
        let state = VcpuState {
            vcpu,
            _vm: vm,
            _kvm: kvm,
            mem,
            access,
            devices,
            counter_khz,
            clock: Arc::new(BootClock::default()),
        };
        Ok(Vm {
            state,
            timings,
            activity,
        })
    }

    /// Runs the guest to its end on a vCPU thread confined by seccomp.
    pub fn run(self) -> Result<RunReport, VmError> {
        self.start()?.wait()
    }

    /// Starts the guest at once (park, then boot with nothing held).
    pub fn start(self) -> Result<RunningVm, VmError> {
        Ok(self.park()?.boot(Vec::new(), Instant::now()))
    }

    /// Parks the VM: its vCPU thread is started and confined, and waits for
    /// [`ParkedVm::boot`] before running the first guest instruction.
    pub fn park(self) -> Result<ParkedVm, VmError> {
        let done = Arc::new(
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(|e| VmError::Thread(e.into()))?,
        );
        let fds = VcpuFds {
            vcpu: self.state.vcpu.as_raw_fd(),
            console: self.state.devices.console.raw_fd(),
            console_is_socket: self.state.devices.console.is_socket(),
            tap: self
                .state
                .devices
                .net
                .as_ref()
                .map(|n| n.tap().file().as_raw_fd()),
            done: done.as_fd().as_raw_fd(),
            vm: self.state._vm.as_raw_fd(),
            conduit: self.state.devices.conduit.is_some(),
        };
        let filter = seccomp::vcpu_filter(&fds)?;
        stop::install_kick_handler();
        let stop = self.state.devices.stop.clone();
        let clock = self.state.clock.clone();
        let (go_tx, go_rx) = mpsc::channel::<Go>();
        let mut timings = self.timings;
        let mut state = self.state;
        let thread_done = done.clone();
        let handle = thread::Builder::new()
            .name("vcpu0".into())
            .spawn(move || {
                let result = park_then_run(&mut state, &filter, &go_rx, &mut timings);
                let _ = thread_done.write(1);
                // The state goes back to the caller's thread: closing its
                // descriptors is not on this thread's allowlist.
                (result, state)
            })
            .map_err(VmError::Thread)?;
        Ok(ParkedVm {
            vcpu: Some(VcpuThread {
                handle,
                stop,
                done,
                clock,
                activity: self.activity,
            }),
            go: go_tx,
        })
    }
}

/// What a parked vCPU thread waits for.
enum Go {
    Boot {
        held: Vec<Vec<u8>>,
        trigger: Instant,
    },
    Cancel,
}

/// The vCPU thread's life: confine itself, wait, run.
fn park_then_run(
    state: &mut VcpuState,
    filter: &seccompiler::BpfProgram,
    go: &mpsc::Receiver<Go>,
    timings: &mut Timings,
) -> Result<RunReport, VmError> {
    if let Some(tsc) = arch::vcpu::guest_counter(&state.vcpu) {
        state.clock.counter_before.store(tsc, Ordering::Release);
        state
            .clock
            .counter_before_ns
            .store(clock::now_ns(), Ordering::Release);
    }
    seccomp::apply(filter)?;
    let (held, trigger) = match go.recv() {
        Ok(Go::Boot { held, trigger }) => (held, trigger),
        Ok(Go::Cancel) | Err(_) => return Err(VmError::Cancelled),
    };
    state
        .clock
        .trigger_ns
        .store(clock::instant_ns(trigger), Ordering::Release);
    if let Some(net) = state.devices.net.as_mut() {
        net.hand_over(held);
    }
    timings.run = timings.start.elapsed();
    let outcome = vcpu_loop(state);
    timings.exit = timings.start.elapsed();
    let first = state.clock.first_instruction_ns.load(Ordering::Acquire);
    timings.first_instruction =
        (first != 0).then(|| clock::to_instant(first).saturating_duration_since(timings.start));
    timings.boot_latency = state.clock.latency();
    let net = state.devices.net.as_ref().map(|n| n.stats);
    Ok(RunReport {
        outcome,
        timings: *timings,
        net,
    })
}

/// The vCPU thread and what others use to reach it.
struct VcpuThread {
    handle: thread::JoinHandle<(Result<RunReport, VmError>, VcpuState)>,
    stop: Arc<StopSignal>,
    done: Arc<EventFd>,
    clock: Arc<BootClock>,
    activity: Arc<AtomicU64>,
}

impl VcpuThread {
    fn join(self) -> Result<RunReport, VmError> {
        let (result, state) = self.handle.join().map_err(|_| VmError::ThreadDied)?;
        drop(state);
        result
    }
}

/// A VM whose vCPU thread waits for its first instruction.
pub struct ParkedVm {
    vcpu: Option<VcpuThread>,
    go: mpsc::Sender<Go>,
}

impl Parked for ParkedVm {
    type Running = RunningVm;
    type Error = VmError;

    fn boot(mut self, held: Vec<Vec<u8>>, trigger: Instant) -> RunningVm {
        let vcpu = self.vcpu.take().expect("a parked VM has its vCPU thread");
        // The idle clock starts at the trigger, not when the VM was parked
        // (which may be hours ago): otherwise a long parking would count as
        // idleness, and the fresh guest would be stopped before it answers.
        vcpu.activity
            .store(clock::instant_ns(trigger), Ordering::Relaxed);
        // The thread is alive and waiting (it only returns after a message),
        // unless it failed to confine itself; then `wait` reports why.
        let _ = self.go.send(Go::Boot { held, trigger });
        RunningVm { vcpu }
    }
}

impl Drop for ParkedVm {
    fn drop(&mut self) {
        if let Some(vcpu) = self.vcpu.take() {
            let _ = self.go.send(Go::Cancel);
            let _ = vcpu.join();
        }
    }
}

/// A guest running on its vCPU thread.
pub struct RunningVm {
    vcpu: VcpuThread,
}

impl Running for RunningVm {
    type Report = RunReport;
    type Error = VmError;

    fn done_fd(&self) -> BorrowedFd<'_> {
        self.vcpu.done.as_fd()
    }

    /// Known once the guest has made its first exit.
    fn boot_latency(&self) -> Option<Duration> {
        self.vcpu.clock.latency()
    }

    fn last_activity_ns(&self) -> u64 {
        self.vcpu.activity.load(Ordering::Relaxed)
    }

    fn wait(self) -> Result<RunReport, VmError> {
        self.vcpu.join()
    }

    /// Kicks the vCPU thread until it is out of the guest, then joins it.
    fn stop(self) -> Result<RunReport, VmError> {
        self.vcpu.stop.request();
        while !self.vcpu.handle.is_finished() {
            stop::kick(self.vcpu.handle.as_pthread_t());
            thread::sleep(Duration::from_micros(200));
        }
        self.wait()
    }

    /// The vCPU thread decides, between exits (see [`crate::stop`]).
    fn stop_if_idle(self, idle_for: Duration) -> Result<IdleStop<RunningVm>, VmError> {
        self.vcpu.stop.request_if_idle(idle_for);
        loop {
            if self.vcpu.handle.is_finished() {
                return Ok(IdleStop::Stopped(self.wait()?));
            }
            if self.vcpu.stop.take_declined() {
                return Ok(IdleStop::Busy(self));
            }
            stop::kick(self.vcpu.handle.as_pthread_t());
            thread::sleep(Duration::from_micros(200));
        }
    }
}
