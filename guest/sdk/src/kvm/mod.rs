//! Jitsu's own KVM monitor (see `runtime/kvm/ABI.md`). What differs between
//! the architectures is one file each: how a hypercall traps (an `out` to a
//! port at CPL 3 on x86-64, a store to the hypercall page at EL1 on arm64),
//! the entry code, the counter and how to fault on purpose. The hypercall
//! wrappers, the NIC, the conduit device and the boot path are shared.

#[cfg(target_arch = "aarch64")]
#[path = "aarch64.rs"]
mod arch;
#[cfg(target_arch = "x86_64")]
#[path = "x86_64.rs"]
mod arch;

pub(crate) mod conduit;
pub mod hypercall;
pub(crate) mod net;
mod start;

pub(crate) use arch::counter;

pub(crate) const NAME: &str = "kvm";

pub(crate) fn console_write(bytes: &[u8]) {
    hypercall::console_write(bytes);
}

pub(crate) fn halt(status: u8) -> ! {
    hypercall::halt(status as u64)
}
