//! Stopping a running guest from another thread.
//!
//! The vCPU thread is either in KVM_RUN (guest code), in the poll hypercall
//! (ppoll), or serving another hypercall. A stop request sets a flag, wakes
//! ppoll through an eventfd, and interrupts KVM_RUN with a signal whose
//! handler does nothing (KVM_RUN returns EINTR). The vCPU loop checks the flag
//! after every exit. A kick that lands just before KVM_RUN is entered would be
//! lost, so [`crate::vm::RunningVm::stop`] repeats it until the thread is done.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use nix::sys::eventfd::{EfdFlags, EventFd};

pub struct StopSignal {
    requested: AtomicBool,
    wake: EventFd,
}

impl StopSignal {
    pub fn new() -> std::io::Result<StopSignal> {
        let wake =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(StopSignal {
            requested: AtomicBool::new(false),
            wake,
        })
    }

    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Readable once a stop was requested; the poll hypercall waits on it.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }
}

/// The signal that interrupts KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn ignore(_: libc::c_int) {}

/// Installs the do-nothing handler for the kick signal, once per process.
/// Without a handler the signal's default action would end the process.
pub fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction is valid; we set a handler that touches
        // nothing (async-signal-safe) and no SA_RESTART, so KVM_RUN returns EINTR.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = ignore as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(kick_signal(), &action, std::ptr::null_mut());
        }
    });
}

/// Interrupts the thread's current system call (KVM_RUN, ppoll).
pub fn kick(thread: libc::pthread_t) {
    // SAFETY: the pthread_t comes from a JoinHandle that has not been joined
    // yet, so it names a live thread; the signal has a no-op handler.
    unsafe { libc::pthread_kill(thread, kick_signal()) };
}
