//! The Jitsu unikernel SDK.
//!
//! A guest is a `#![no_std] #![no_main]` binary that names its main function
//! with [`entry!`]. The SDK gives it the boot information, a console, a
//! monotonic clock, a bump heap for long-lived buffers, and a smoltcp network
//! stack driven by an event loop that blocks in the monitor between events.
//!
//! All `unsafe` code lives in [`start`], [`hypercall`] (the `out` instruction)
//! and [`heap`]; everything else is safe Rust on top of them.

#![no_std]

pub mod boot;
pub mod clock;
pub mod console;
pub mod heap;
pub mod hypercall;
pub mod net;
mod start;

pub use boot::Boot;
pub use jitsu_abi as abi;
pub use smoltcp;

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

/// Ends the unikernel with `status` as the monitor's exit status.
pub fn exit(status: i32) -> ! {
    hypercall::halt(status as u8 as u64)
}
