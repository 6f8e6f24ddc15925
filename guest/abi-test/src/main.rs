//! Exercises the guest ABI: `jitsu run abi-test -- COMMAND [ARG]`.
//! Several commands misbehave on purpose, to show that the monitor contains
//! them; that is the only reason this guest has `unsafe` code of its own.
//! The commands that test Jitsu's KVM monitor itself (its hypercalls, its
//! page tables, its egress filter) are in `kvm.rs` and exist only there.

#![no_std]
#![no_main]

#[cfg(not(feature = "xen"))]
mod kvm;

use jitsu_sdk::{clock, println, Boot};

jitsu_sdk::entry!(main);

fn main(boot: &Boot) -> i32 {
    let mut words = boot.cmdline().split_ascii_whitespace();
    let command = words.next().unwrap_or("hello");
    let arg = words.next().and_then(|w| w.parse::<u64>().ok());
    match command {
        "hello" => {
            println!("hello from abi-test");
            0
        }
        "exit" => arg.unwrap_or(0) as i32,
        "bootinfo" => print_boot_info(boot),
        "sse" => sse(),
        "spin" => {
            // Guest code that never exits to the monitor: only a kick stops it.
            println!("spinning");
            loop {
                core::hint::spin_loop();
            }
        }
        "chatter" => {
            // A guest that logs without end, as a busy server's access log
            // does: the console must never hold the monitor up.
            let mut line = 0u64;
            loop {
                println!("chatter {line:>12} ................................................................");
                line += 1;
            }
        }
        "uptime" => {
            println!("uptime_nanos={}", clock::now_nanos());
            0
        }
        "panic" => panic!("deliberate panic from abi-test"),
        "crash" => crash(),
        #[cfg(not(feature = "xen"))]
        other => kvm::command(boot, other, arg),
        #[cfg(feature = "xen")]
        other => {
            println!("abi-test: unknown command {other:?}");
            2
        }
    }
}

fn print_boot_info(boot: &Boot) -> i32 {
    println!("platform={}", jitsu_sdk::PLATFORM);
    #[cfg(not(feature = "xen"))]
    kvm::print_boot_info(boot);
    #[cfg(feature = "xen")]
    println!("mem_size={}", boot.mem_size());
    println!("cmdline={}", boot.cmdline());
    match boot.net() {
        Some(net) => {
            let [a, b, c, d, e, f] = net.mac;
            println!("mac={a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}");
            let [a, b, c, d] = net.ipv4;
            println!("ipv4={a}.{b}.{c}.{d}/{}", net.prefix_len);
            let [a, b, c, d] = net.gateway;
            println!("gateway={a}.{b}.{c}.{d}");
            println!("mtu={}", net.mtu);
        }
        None => println!("net=none"),
    }
    0
}

fn sse() -> i32 {
    // Floating point goes through SSE registers; at CPL 0 on this kind of
    // host that would stop the VM, at CPL 3 it runs natively.
    let mut x = core::hint::black_box(1.0f64);
    for i in 1..=20 {
        x = x * 1.5 + 1.0 / i as f64;
    }
    println!("sse={x:.6}");
    0
}

/// An undefined instruction on purpose (`ud2`, `udf`): the monitor ends
/// the guest and reports the crash. Nothing runs after it.
#[cfg(not(feature = "xen"))]
fn crash() -> i32 {
    jitsu_sdk::hypercall::fault()
}

#[cfg(feature = "xen")]
fn crash() -> i32 {
    // SAFETY: none needed; the instruction raises an undefined-instruction
    // exception (x86-64: #UD with no handler, a triple fault; arm64: the
    // SDK's vectors report it), which ends the domain.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        core::arch::asm!("ud2")
    };
    #[cfg(target_arch = "aarch64")]
    unsafe {
        core::arch::asm!("udf #0")
    };
    0
}
