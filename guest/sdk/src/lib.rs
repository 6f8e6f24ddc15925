//! The Jitsu unikernel SDK.
//!
//! A guest is a `#![no_std] #![no_main]` binary that names its main function
//! with [`entry!`]. The SDK gives it the boot information, a console, a
//! monotonic clock, a bump heap for long-lived buffers, and a smoltcp network
//! stack driven by an event loop that blocks between events.
//!
//! What differs between hypervisors lives in one folder per platform, with
//! the same few parts in each (start, console, counter, net device, halt):
//! `kvm/` for Jitsu's own KVM monitor (the default; x86-64 and arm64, one
//! file each) and `xen_pvh/` for Xen PVH domains (feature `xen-pvh`).
//! Everything in this folder is shared. `unsafe` code lives in the platform
//! folders, [`heap`] and [`libc`].

#![no_std]

pub mod boot;
pub mod clock;
pub mod conduit;
pub mod console;
pub mod heap;
mod libc;
pub mod net;

#[cfg(not(feature = "xen-pvh"))]
#[path = "kvm/mod.rs"]
mod platform;
#[cfg(feature = "xen-pvh")]
#[path = "xen_pvh/mod.rs"]
mod platform;

/// The KVM monitor's hypercalls, for guests that test the monitor itself.
#[cfg(not(feature = "xen-pvh"))]
pub use platform::hypercall;

pub use boot::Boot;
pub use jitsu_abi as abi;
/// Conduit's channel (libxenvchan's layout), the same code the host tests.
pub use jitsu_vchan as vchan;
pub use smoltcp;

/// The platform this guest was built for: `"kvm"` or `"xen-pvh"`.
pub const PLATFORM: &str = platform::NAME;

/// Names the guest's main function: `fn(&Boot) -> i32`. Its return value is
/// the exit status of the unikernel.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[no_mangle]
        pub extern "Rust" fn __jitsu_main(boot: &$crate::Boot) -> i32 {
            let main: fn(&$crate::Boot) -> i32 = $main;
            main(boot)
        }
    };
}

extern "Rust" {
    /// Defined by the guest through `jitsu_sdk::entry!`.
    fn __jitsu_main(boot: &Boot) -> i32;
}

/// Runs the guest's main function and ends the unikernel with its status;
/// each platform's start code calls this once the machine is set up.
pub(crate) fn run_main(boot: Boot) -> ! {
    // SAFETY: `entry!` defines this symbol with exactly this signature.
    let status = unsafe { __jitsu_main(&boot) };
    exit(status)
}

/// Ends the unikernel with `status` (its low 8 bits) as the exit status.
pub fn exit(status: i32) -> ! {
    platform::halt(status as u8)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("panic: {info}");
    platform::halt(101)
}
