//! Jitsu's own KVM monitor: the guest runs at CPL 3 in long mode set up by
//! the monitor, and every hypercall is an `out` to a port (see `runtime/kvm/ABI.md`).

pub(crate) mod conduit;
pub mod hypercall;
pub(crate) mod net;
mod start;

pub(crate) const NAME: &str = "kvm";

pub(crate) fn console_write(bytes: &[u8]) {
    hypercall::console_write(bytes);
}

pub(crate) fn halt(status: u8) -> ! {
    hypercall::halt(status as u64)
}
