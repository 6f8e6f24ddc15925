//! The allowlists of a KVM monitor. [`monitor_filter`] confines every
//! thread of the process (the main thread parses frames from the network;
//! the registry thread XenStore's answers) from before the first untrusted
//! byte is read; [`vcpu_filter`] adds a narrower one to the vCPU thread,
//! which runs guest code and serves its hypercalls, before the first guest
//! instruction. Anything not listed kills the whole monitor (SIGSYS): a
//! compromised thread must not get to try again.
//!
//! Arguments are pinned where that is cheap: `ioctl` only on the vCPU fd and
//! only with the requests the loop makes; `read` only from the TAP; `write`
//! only to the console, stderr (logs) and the TAP (`sendto` only to a
//! console that is a socket); memory may be mapped but never executable.

use std::collections::BTreeMap;
use std::os::fd::RawFd;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition as Cond, SeccompFilter, SeccompRule,
};
use thiserror::Error;

use crate::arch::seccomp as arch;

#[derive(Debug, Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error("cannot install the seccomp filter: {0}")]
    Install(#[from] seccompiler::Error),
}

const KVMIO: u64 = 0xae;
pub(crate) const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
pub(crate) const fn io(nr: u64) -> u64 {
    ioc(0, nr, 0)
}
pub(crate) const fn iow(nr: u64, size: usize) -> u64 {
    ioc(1, nr, size)
}
pub(crate) const fn ior(nr: u64, size: usize) -> u64 {
    ioc(2, nr, size)
}
pub const KVM_RUN: u64 = io(0x80);
pub const KVM_SET_USER_MEMORY_REGION: u64 =
    iow(0x46, size_of::<kvm_bindings::kvm_userspace_memory_region>());

/// The KVM requests every architecture makes to build and run VMs: on
/// `/dev/kvm`, on a VM and on a vCPU (`arch::seccomp` adds its own).
const KVM_REQUESTS: [u64; 7] = [
    io(0x00), // KVM_GET_API_VERSION
    io(0x01), // KVM_CREATE_VM
    io(0x03), // KVM_CHECK_EXTENSION
    io(0x04), // KVM_GET_VCPU_MMAP_SIZE
    io(0x41), // KVM_CREATE_VCPU
    KVM_SET_USER_MEMORY_REGION,
    KVM_RUN,
];
/// Other requests on the monitor's descriptors: non-blocking and
/// close-on-exec flags (tokio, std) and whether stderr is a terminal.
const OTHER_REQUESTS: [u64; 3] = [libc::FIONBIO, libc::FIOCLEX, libc::TCGETS];

/// The file descriptors the vCPU thread may use.
pub struct VcpuFds {
    pub vcpu: RawFd,
    pub console: RawFd,
    /// The console is a socket, written with `send` (see `devices::console`).
    pub console_is_socket: bool,
    pub tap: Option<RawFd>,
    /// Eventfd the thread writes when the guest has ended.
    pub done: RawFd,
    /// The VM, whose memory slots the conduit device changes.
    pub vm: RawFd,
    /// The guest has the conduit device: the thread signals and drains
    /// eventfds in [`jitsu_conduit::channel::SIGNAL_FDS`].
    pub conduit: bool,
}

fn fd_is(arg: u8, fd: RawFd) -> Result<Cond, seccompiler::BackendError> {
    Cond::new(arg, Len::Dword, Op::Eq, fd as u64)
}

fn rules(fds: &VcpuFds) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let allow = Vec::new;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut ioctl: Vec<SeccompRule> = std::iter::once(KVM_RUN)
        .chain(arch::VCPU_REQUESTS)
        .map(|req| {
            SeccompRule::new(vec![
                fd_is(0, fds.vcpu)?,
                Cond::new(1, Len::Dword, Op::Eq, req)?,
            ])
        })
        .collect::<Result<_, _>>()?;
    if fds.conduit {
        ioctl.push(SeccompRule::new(vec![
            fd_is(0, fds.vm)?,
            Cond::new(1, Len::Dword, Op::Eq, KVM_SET_USER_MEMORY_REGION)?,
        ])?);
    }
    rules.insert(libc::SYS_ioctl, ioctl);
    // Channel signals: eventfds, 8 bytes at a time, in their own range.
    let signal_fds = || -> Result<SeccompRule, seccompiler::BackendError> {
        let range = jitsu_conduit::channel::SIGNAL_FDS;
        SeccompRule::new(vec![
            Cond::new(0, Len::Dword, Op::Ge, range.start as u64)?,
            Cond::new(0, Len::Dword, Op::Lt, range.end as u64)?,
            Cond::new(2, Len::Qword, Op::Eq, 8)?,
        ])
    };
    let mut writers = vec![fds.console, libc::STDERR_FILENO, fds.done];
    writers.extend(fds.tap);
    writers.sort_unstable();
    writers.dedup();
    let mut write: Vec<SeccompRule> = writers
        .iter()
        .map(|&fd| SeccompRule::new(vec![fd_is(0, fd)?]))
        .collect::<Result<_, _>>()?;
    if fds.conduit {
        write.push(signal_fds()?);
    }
    rules.insert(libc::SYS_write, write);
    if fds.console_is_socket {
        rules.insert(
            libc::SYS_sendto,
            vec![SeccompRule::new(vec![fd_is(0, fds.console)?])?],
        );
    }
    let mut read = Vec::new();
    if let Some(tap) = fds.tap {
        read.push(SeccompRule::new(vec![fd_is(0, tap)?])?);
    }
    if fds.conduit {
        read.push(signal_fds()?);
    }
    if !read.is_empty() {
        rules.insert(libc::SYS_read, read);
    }
    let no_exec = |arg| Cond::new(arg, Len::Dword, Op::MaskedEq(libc::PROT_EXEC as u64), 0);
    rules.insert(libc::SYS_mmap, vec![SeccompRule::new(vec![no_exec(2)?])?]);
    rules.insert(
        libc::SYS_mprotect,
        vec![SeccompRule::new(vec![no_exec(2)?])?],
    );
    let shared = [
        libc::SYS_ppoll,
        libc::SYS_clock_gettime,
        libc::SYS_futex,
        libc::SYS_munmap,
        libc::SYS_madvise,
        libc::SYS_mremap,
        libc::SYS_brk,
        libc::SYS_sigaltstack,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sched_yield,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ];
    for syscall in shared.into_iter().chain(arch::VCPU_LEGACY_SYSCALLS) {
        rules.insert(syscall, allow());
    }
    Ok(rules)
}

/// Every thread of the monitor: its main loop (Synjitsu, the control
/// socket, building VMs), the registry agent (tokio on one thread) and the
/// vCPU thread (which adds [`vcpu_filter`]). No file can be opened, no
/// process started, no socket but a unix one made, no memory made
/// executable; ioctls only from the KVM list and a few descriptor flags.
fn monitor_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let arg_is = |arg, value: u64| Cond::new(arg, Len::Qword, Op::Eq, value);
    let one_of = |arg, values: &[u64]| -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
        values
            .iter()
            .map(|&v| SeccompRule::new(vec![arg_is(arg, v)?]))
            .collect()
    };
    let mut requests = KVM_REQUESTS.to_vec();
    requests.extend(arch::KVM_REQUESTS);
    requests.extend(OTHER_REQUESTS);
    let ioctl = requests
        .into_iter()
        .map(|req| SeccompRule::new(vec![Cond::new(1, Len::Dword, Op::Eq, req)?]))
        .collect::<Result<_, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl);
    let no_exec = |arg| Cond::new(arg, Len::Dword, Op::MaskedEq(libc::PROT_EXEC as u64), 0);
    rules.insert(libc::SYS_mmap, vec![SeccompRule::new(vec![no_exec(2)?])?]);
    rules.insert(
        libc::SYS_mprotect,
        vec![SeccompRule::new(vec![no_exec(2)?])?],
    );
    // Threads only (no fork): clone with CLONE_THREAD; clone3's flags are
    // out of a filter's reach, so it is answered ENOSYS (see
    // `clone3_unsupported`) and the C library falls back to clone.
    let thread = libc::CLONE_THREAD as u64;
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![Cond::new(
            0,
            Len::Qword,
            Op::MaskedEq(thread),
            thread,
        )?])?],
    );
    let unix = libc::AF_UNIX as u64;
    rules.insert(libc::SYS_socket, one_of(0, &[unix])?);
    rules.insert(libc::SYS_socketpair, one_of(0, &[unix])?);
    let prctl = [
        libc::PR_SET_NAME,
        libc::PR_GET_NAME,
        libc::PR_SET_NO_NEW_PRIVS,
    ];
    rules.insert(libc::SYS_prctl, one_of(0, &prctl.map(|p| p as u64))?);
    // Reading its own stack limit (std, at thread start), never setting one.
    rules.insert(
        libc::SYS_prlimit64,
        vec![SeccompRule::new(vec![arg_is(0, 0)?, arg_is(2, 0)?])?],
    );
    for syscall in [
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_close,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_lseek,
        libc::SYS_fcntl,
        libc::SYS_dup,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_brk,
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_ppoll,
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_pwait,
        libc::SYS_eventfd2,
        libc::SYS_signalfd4,
        libc::SYS_connect,
        libc::SYS_accept,
        libc::SYS_accept4,
        // Conduit's listener again, once jailed (see `jitsu_conduit::Broker`).
        libc::SYS_listen,
        libc::SYS_sendto,
        libc::SYS_recvfrom,
        libc::SYS_sendmsg,
        libc::SYS_recvmsg,
        libc::SYS_shutdown,
        libc::SYS_getsockopt,
        libc::SYS_setsockopt,
        libc::SYS_getsockname,
        libc::SYS_getpeername,
        // The control socket's name, on the way out (a no-op in the jail).
        libc::SYS_unlinkat,
        // Conduit: a channel's memory (a sealed memfd), and a name's group
        // in the socket directory (a symlink's target).
        libc::SYS_memfd_create,
        libc::SYS_ftruncate,
        libc::SYS_readlinkat,
        libc::SYS_futex,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_clone3,
        libc::SYS_sched_getaffinity,
        libc::SYS_sched_yield,
        libc::SYS_getrandom,
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_gettid,
        libc::SYS_getpid,
        libc::SYS_getppid,
        libc::SYS_tgkill,
        libc::SYS_seccomp,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ]
    .into_iter()
    .chain(arch::LEGACY_SYSCALLS)
    {
        rules.insert(syscall, Vec::new());
    }
    Ok(rules)
}

/// The allowlist of every thread of the monitor (see [`monitor_rules`]).
pub fn monitor_filter() -> Result<Vec<BpfProgram>, SeccompError> {
    let allowlist = SeccompFilter::new(
        monitor_rules()?,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch::TARGET,
    )?;
    let mut clone3 = BTreeMap::new();
    clone3.insert(libc::SYS_clone3, Vec::new());
    let clone3_unsupported = SeccompFilter::new(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch::TARGET,
    )?;
    Ok(vec![allowlist.try_into()?, clone3_unsupported.try_into()?])
}

/// Confines every thread of the process (TSYNC) with `filters`.
pub fn apply_to_process(filters: &[BpfProgram]) -> Result<(), SeccompError> {
    for filter in filters {
        seccompiler::apply_filter_all_threads(filter)?;
    }
    Ok(())
}

/// Compiles the filter; done before the vCPU thread starts, off its path.
pub fn vcpu_filter(fds: &VcpuFds) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(
        rules(fds)?,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch::TARGET,
    )?;
    Ok(filter.try_into()?)
}

/// Confines the calling thread (only it: no TSYNC).
pub fn apply(program: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(program)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How a child that applied the monitor's filter and then ran `call`
    /// ended: `Err(signal)` if killed, `Ok(status)` if it exited.
    fn in_confined_child(call: fn() -> i32) -> Result<i32, i32> {
        let filters = monitor_filter().unwrap();
        // SAFETY: the child only applies the (already compiled) filters,
        // makes raw system calls and exits; it touches no lock another
        // thread of the test harness could hold.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let applied = apply_to_process(&filters).is_ok();
            let status = if applied { call() } else { 99 };
            // SAFETY: ends the child without running the parent's atexit
            // handlers or destructors.
            unsafe { libc::_exit(status) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        if libc::WIFSIGNALED(status) {
            Err(libc::WTERMSIG(status))
        } else {
            Ok(libc::WEXITSTATUS(status))
        }
    }

    #[test]
    fn what_a_monitor_does_is_allowed() {
        let ordinary = || {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: plain system calls on valid arguments.
            unsafe {
                libc::getpid();
                libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
                let fd = libc::eventfd(0, libc::EFD_CLOEXEC);
                libc::close(fd);
                let unix = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                libc::close(unix);
            }
            0
        };
        assert_eq!(in_confined_child(ordinary), Ok(0));
        let clone3 = || {
            // SAFETY: clone3 with no arguments; the filter answers first.
            let r = unsafe { libc::syscall(libc::SYS_clone3, 0, 0) };
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if r == -1 && errno == libc::ENOSYS {
                0
            } else {
                1
            }
        };
        assert_eq!(in_confined_child(clone3), Ok(0), "clone3 says ENOSYS");
    }

    #[test]
    fn a_syscall_outside_the_list_kills_the_monitor() {
        type Call = fn() -> i32;
        let forbidden: [(&str, Call); 5] = [
            ("open a file", || {
                // SAFETY: a plain system call on a valid path.
                unsafe { libc::open(c"/etc/hostname".as_ptr(), libc::O_RDONLY) };
                0
            }),
            ("an IP socket", || {
                // SAFETY: a plain system call.
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
                0
            }),
            ("fork", || {
                // SAFETY: clone without CLONE_THREAD, as fork does; the
                // filter kills before a child exists.
                unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
                0
            }),
            ("executable memory", || {
                // SAFETY: an anonymous mapping; never used.
                unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        4096,
                        libc::PROT_READ | libc::PROT_EXEC,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                };
                0
            }),
            ("exec", || {
                let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
                // SAFETY: a valid path and argument vector.
                unsafe { libc::execv(c"/bin/true".as_ptr(), argv.as_ptr()) };
                0
            }),
        ];
        for (what, call) in forbidden {
            assert_eq!(in_confined_child(call), Err(libc::SIGSYS), "{what}");
        }
    }
}
