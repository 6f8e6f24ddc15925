//! Stopping a running guest from another thread.
//!
//! The vCPU thread is either in KVM_RUN (guest code), in the poll hypercall
//! (ppoll), or serving another hypercall. A stop request sets a flag, wakes
//! ppoll through an eventfd, and interrupts KVM_RUN with a signal whose
//! handler does nothing (KVM_RUN returns EINTR). The vCPU loop checks the flag
//! after every exit. A kick that lands just before KVM_RUN is entered would be
//! lost, so [`crate::vm::RunningVm::stop`] repeats it until the thread is done.
//!
//! An idle stop is conditional, and the vCPU thread decides it: the
//! supervisor only saw that no frame moved for the idle timeout, but a SYN
//! may reach the guest while the request is on its way. Frames move on the
//! vCPU thread, between exits, so that is where "still idle?" has a true
//! answer; if the guest has been busy since, the request is declined and
//! the guest runs on. A frame not yet read stays on the TAP for Synjitsu.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Once;
use std::time::Duration;

use nix::sys::eventfd::{EfdFlags, EventFd};

const NONE: u8 = 0;
const STOP: u8 = 1;
const STOP_IF_IDLE: u8 = 2;

pub struct StopSignal {
    requested: AtomicU8,
    /// For an idle stop: how long without a frame counts as idle.
    idle_for_ns: AtomicU64,
    /// The last idle stop was declined: the guest had been busy.
    declined: AtomicBool,
    wake: EventFd,
}

impl StopSignal {
    pub fn new() -> std::io::Result<StopSignal> {
        let wake =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        Ok(StopSignal {
            requested: AtomicU8::new(NONE),
            idle_for_ns: AtomicU64::new(0),
            declined: AtomicBool::new(false),
            wake,
        })
    }

    pub fn request(&self) {
        self.requested.store(STOP, Ordering::SeqCst);
        let _ = self.wake.write(1);
    }

    /// Asks for a stop if the guest has been idle for `idle_for` when the
    /// vCPU thread looks (an unconditional request stays unconditional).
    pub fn request_if_idle(&self, idle_for: Duration) {
        self.idle_for_ns
            .store(idle_for.as_nanos() as u64, Ordering::SeqCst);
        self.declined.store(false, Ordering::SeqCst);
        let _ =
            self.requested
                .compare_exchange(NONE, STOP_IF_IDLE, Ordering::SeqCst, Ordering::SeqCst);
        let _ = self.wake.write(1);
    }

    /// On the vCPU thread, between exits: whether to stop now.
    /// `idle_for(d)` tells whether the guest has been idle for `d`.
    pub fn should_stop(&self, idle_for: impl FnOnce(Duration) -> bool) -> bool {
        match self.requested.load(Ordering::SeqCst) {
            NONE => false,
            STOP_IF_IDLE => {
                let threshold = Duration::from_nanos(self.idle_for_ns.load(Ordering::SeqCst));
                if idle_for(threshold) {
                    return true;
                }
                let declined = self
                    .requested
                    .compare_exchange(STOP_IF_IDLE, NONE, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok();
                if !declined {
                    return true; // made unconditional meanwhile
                }
                // Drain the wake-up so the guest's next poll can block again.
                let _ = self.wake.read();
                self.declined.store(true, Ordering::SeqCst);
                false
            }
            _ => true,
        }
    }

    /// Whether the vCPU thread declined the last idle stop (once).
    pub fn take_declined(&self) -> bool {
        self.declined.swap(false, Ordering::SeqCst)
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

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_millis(100);

    #[test]
    fn an_idle_stop_is_declined_for_a_busy_guest_and_the_wakeup_drained() {
        let stop = StopSignal::new().unwrap();
        assert!(!stop.should_stop(|_| true), "nothing asked");
        stop.request_if_idle(IDLE);
        let mut asked = None;
        assert!(!stop.should_stop(|d| {
            asked = Some(d);
            false
        }));
        assert_eq!(asked, Some(IDLE));
        assert!(stop.take_declined());
        assert!(!stop.take_declined(), "told once");
        assert!(
            stop.wake.read().is_err(),
            "the poll hypercall can block again"
        );
        assert!(!stop.should_stop(|_| true), "a declined request is gone");
        stop.request_if_idle(IDLE);
        assert!(stop.should_stop(|_| true), "idle: stop");
    }

    #[test]
    fn an_unconditional_stop_wins() {
        let stop = StopSignal::new().unwrap();
        stop.request_if_idle(IDLE);
        stop.request();
        assert!(stop.should_stop(|_| false), "busy or not");
        let stop = StopSignal::new().unwrap();
        stop.request();
        stop.request_if_idle(IDLE);
        assert!(
            stop.should_stop(|_| false),
            "not weakened by a later idle stop"
        );
    }
}
