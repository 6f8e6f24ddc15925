//! Commands that test Jitsu's KVM monitor: its hypercalls and the checks it
//! makes on them, its page tables (W^X, NX, isolation) and its egress filter.

use jitsu_sdk::abi::hypercall as hc;
use jitsu_sdk::{clock, hypercall, println, Boot};

pub fn command(boot: &Boot, command: &str, arg: Option<u64>) -> i32 {
    match command {
        "walltime" => {
            println!("walltime_nanos={}", hypercall::walltime());
            0
        }
        "poll" => poll(arg.unwrap_or(10)),
        "hypercalls" => hypercalls(arg.unwrap_or(10_000) as usize),
        "bad-buffer" => {
            // A console write whose buffer lies past the end of guest memory.
            let arg = [boot.mem_size() + 0x1000, 16, 0];
            hypercall::raw(hc::CONSOLE_WRITE, arg.as_ptr() as u32);
            println!("still running after a bad buffer");
            0
        }
        "bad-arg" => {
            // The argument structure itself lies outside guest memory.
            hypercall::raw(hc::WALLTIME, u32::MAX - 4);
            0
        }
        "bad-nr" => {
            hypercall::raw(hc::COUNT, 0x2000);
            0
        }
        "spoof" => spoof(boot),
        "write-code" => write_code(),
        "read-pagetables" => read_monitor_page(),
        "exec-data" => exec_data(),
        other => {
            println!("abi-test: unknown command {other:?}");
            2
        }
    }
}

pub fn print_boot_info(boot: &Boot) {
    let info = boot.info();
    println!("abi_version={}", info.abi_version);
    println!("mem_size={}", info.mem_size);
    println!("image_end={:#x}", info.image_end);
    println!("counter_hz={}", info.counter_hz);
    println!("walltime_nanos={}", info.walltime_nanos);
}

fn poll(millis: u64) -> i32 {
    let start = clock::now_nanos();
    let ready = hypercall::poll(millis * 1_000_000);
    let waited = (clock::now_nanos() - start) / 1_000_000;
    println!("poll ready={ready} waited_ms={waited}");
    0
}

/// Times `n` WALLTIME round trips and prints the median and the 99th
/// percentile in nanoseconds.
fn hypercalls(n: usize) -> i32 {
    let Some(samples) = jitsu_sdk::heap::array(n.max(1), |_| 0u64) else {
        println!("hypercalls: out of memory");
        return 1;
    };
    for sample in samples.iter_mut() {
        let start = clock::counter();
        hypercall::walltime();
        *sample = clock::ticks_to_nanos(clock::counter() - start);
    }
    samples.sort_unstable();
    let median = samples[samples.len() / 2];
    let p99 = samples[(samples.len() * 99 / 100).min(samples.len() - 1)];
    println!("hypercalls n={n} median_ns={median} p99_ns={p99}");
    0
}

/// Sends one batch of frames: two as itself (an ARP request for the
/// gateway, then a UDP datagram to it, last, carrying `jitsu-egress-ok`),
/// and five posing as someone else or speaking other protocols, which the
/// monitor must refuse.
fn spoof(boot: &Boot) -> i32 {
    let Some(net) = boot.net() else {
        println!("spoof: no NIC");
        return 1;
    };
    let (mac, ip, gw) = (net.mac, net.ipv4, net.gateway);
    let mut other_ip = ip;
    other_ip[3] = other_ip[3].wrapping_add(100);
    let other_mac = [0x02, 0, 0, 0, 0, 0x99];
    let mut batch = [0u8; 1024];
    let mut at = 0;
    let mut push = |frame: &[u8]| {
        batch[at..at + 2].copy_from_slice(&(frame.len() as u16).to_le_bytes());
        batch[at + 2..at + 2 + frame.len()].copy_from_slice(frame);
        at += 2 + frame.len();
    };
    push(&arp(mac, mac, ip, gw));
    push(&arp(mac, mac, other_ip, gw));
    push(&udp(mac, other_ip, gw, 0x0800));
    push(&udp(other_mac, ip, gw, 0x0800));
    push(&udp(mac, ip, gw, 0x86dd));
    push(&udp(mac, ip, gw, 0x8100));
    push(&udp(mac, ip, gw, 0x0800));
    let sent = hypercall::net_write(&batch[..at]);
    println!("spoof: ret={} frames={}", sent.ret, sent.frames);
    0
}

fn arp(eth_src: [u8; 6], sender_mac: [u8; 6], sender: [u8; 4], target: [u8; 4]) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&eth_src);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&sender_mac);
    f[28..32].copy_from_slice(&sender);
    f[38..42].copy_from_slice(&target);
    f
}

const MARK: &[u8] = b"jitsu-egress-ok";

/// A UDP datagram to port 9 carrying [`MARK`], under `ethertype`.
fn udp(eth_src: [u8; 6], src: [u8; 4], dst: [u8; 4], ethertype: u16) -> [u8; 57] {
    let mut f = [0u8; 57];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&eth_src);
    f[12..14].copy_from_slice(&ethertype.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(20u16 + 8 + MARK.len() as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let mut sum = 0u32;
    for pair in ip.chunks(2) {
        sum += u16::from_be_bytes([pair[0], pair[1]]) as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let sum = !(sum as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&9u16.to_be_bytes());
    udp[2..4].copy_from_slice(&9u16.to_be_bytes());
    udp[4..6].copy_from_slice(&(8u16 + MARK.len() as u16).to_be_bytes());
    f[42..].copy_from_slice(MARK);
    f
}

fn write_code() -> i32 {
    let code = write_code as *const () as *mut u8;
    // SAFETY: deliberately wrong: code pages are mapped read-only, so this
    // store faults and the monitor reports a crash.
    unsafe { code.write_volatile(0xcc) };
    println!("wrote to code: W^X is broken");
    0
}

fn read_monitor_page() -> i32 {
    // The page tables lie below the image and are not mapped.
    let page_table = 0x3000 as *const u64;
    // SAFETY: deliberately wrong: the read faults.
    let entry = unsafe { page_table.read_volatile() };
    println!("read page table entry {entry:#x}: isolation is broken");
    0
}

fn exec_data() -> i32 {
    let Some(buf) = jitsu_sdk::heap::bytes(16) else {
        return 1;
    };
    #[cfg(target_arch = "x86_64")]
    let ret: &[u8] = &[0xc3];
    #[cfg(target_arch = "aarch64")]
    let ret: &[u8] = &0xd65f_03c0u32.to_le_bytes();
    buf[..ret.len()].copy_from_slice(ret);
    // SAFETY: deliberately wrong: heap pages are no-execute, so the call
    // faults before the `ret` runs.
    let f: extern "C" fn() = unsafe { core::mem::transmute(buf.as_ptr()) };
    f();
    println!("executed data: NX is broken");
    0
}
