//! The allowlist that confines the vCPU thread, which runs guest code and
//! serves its hypercalls, before the first guest instruction. Anything not
//! listed kills the whole monitor (SIGSYS): a compromised vCPU thread must
//! not get to try again.
//!
//! Arguments are pinned where that is cheap: `ioctl` only on the vCPU fd and
//! only with the requests the loop makes; `read` only from the TAP; `write`
//! only to the console, stderr (logs) and the TAP (`sendto` only to a
//! console that is a socket); memory may be mapped but never executable.

use std::collections::BTreeMap;
use std::os::fd::RawFd;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition as Cond, SeccompFilter, SeccompRule, TargetArch,
};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error("cannot install the seccomp filter: {0}")]
    Install(#[from] seccompiler::Error),
}

const KVMIO: u64 = 0xae;
const fn ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
pub const KVM_RUN: u64 = (KVMIO << 8) | 0x80;
pub const KVM_GET_REGS: u64 = ior(0x81, size_of::<kvm_bindings::kvm_regs>());
pub const KVM_GET_SREGS: u64 = ior(0x83, size_of::<kvm_bindings::kvm_sregs>());

/// The file descriptors the vCPU thread may use.
pub struct VcpuFds {
    pub vcpu: RawFd,
    pub console: RawFd,
    /// The console is a socket, written with `send` (see `devices::console`).
    pub console_is_socket: bool,
    pub tap: Option<RawFd>,
    /// Eventfd the thread writes when the guest has ended.
    pub done: RawFd,
}

fn fd_is(arg: u8, fd: RawFd) -> Result<Cond, seccompiler::BackendError> {
    Cond::new(arg, Len::Dword, Op::Eq, fd as u64)
}

fn rules(fds: &VcpuFds) -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let allow = Vec::new;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let ioctl = [KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS]
        .into_iter()
        .map(|req| {
            SeccompRule::new(vec![
                fd_is(0, fds.vcpu)?,
                Cond::new(1, Len::Dword, Op::Eq, req)?,
            ])
        })
        .collect::<Result<_, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl);
    let mut writers = vec![fds.console, libc::STDERR_FILENO, fds.done];
    writers.extend(fds.tap);
    writers.sort_unstable();
    writers.dedup();
    let write = writers
        .iter()
        .map(|&fd| SeccompRule::new(vec![fd_is(0, fd)?]))
        .collect::<Result<_, _>>()?;
    rules.insert(libc::SYS_write, write);
    if fds.console_is_socket {
        rules.insert(
            libc::SYS_sendto,
            vec![SeccompRule::new(vec![fd_is(0, fds.console)?])?],
        );
    }
    if let Some(tap) = fds.tap {
        rules.insert(
            libc::SYS_read,
            vec![SeccompRule::new(vec![fd_is(0, tap)?])?],
        );
    }
    let no_exec = |arg| Cond::new(arg, Len::Dword, Op::MaskedEq(libc::PROT_EXEC as u64), 0);
    rules.insert(libc::SYS_mmap, vec![SeccompRule::new(vec![no_exec(2)?])?]);
    rules.insert(
        libc::SYS_mprotect,
        vec![SeccompRule::new(vec![no_exec(2)?])?],
    );
    for syscall in [
        libc::SYS_ppoll,
        libc::SYS_poll,
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
    ] {
        rules.insert(syscall, allow());
    }
    Ok(rules)
}

/// Compiles the filter; done before the vCPU thread starts, off its path.
pub fn vcpu_filter(fds: &VcpuFds) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(
        rules(fds)?,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    Ok(filter.try_into()?)
}

/// Confines the calling thread (only it: no TSYNC).
pub fn apply(program: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(program)?;
    Ok(())
}
