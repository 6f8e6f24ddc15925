//! The guest ABI, end to end: `jitsu run abi-test -- COMMAND` on real KVM.

use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::time::Duration;

use jitsu_e2e::process::{run_with_timeout, Guarded};
use jitsu_e2e::{guest, jitsu_bin, require_root_and_kvm};

const GUEST_FAULT: i32 = 126;

fn run_abi_test(jitsu_args: &[&str], guest_args: &[&str]) -> Output {
    require_root_and_kvm();
    let mut cmd = Command::new(jitsu_bin());
    cmd.arg("run")
        .args(jitsu_args)
        .arg(guest("abi-test"))
        .arg("--")
        .args(guest_args);
    run_with_timeout(&mut cmd, Duration::from_secs(20))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The monitor ended on its own terms (an exit code, not a signal such as
/// SIGSYS from seccomp) and printed no Rust panic.
fn assert_monitor_alive(out: &Output) {
    assert!(
        out.status.code().is_some(),
        "monitor killed by a signal: {:?}\n{}",
        out.status,
        stderr(out)
    );
    assert!(
        !stderr(out).contains("panicked"),
        "monitor panicked: {}",
        stderr(out)
    );
}

#[test]
fn console_text_reaches_stdout() {
    let out = run_abi_test(&[], &["hello"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello from abi-test\n");
}

#[test]
fn exit_status_is_the_guests() {
    for status in [0, 3, 42, 255] {
        let out = run_abi_test(&[], &["exit", &status.to_string()]);
        assert_eq!(out.status.code(), Some(status), "{}", stderr(&out));
    }
}

#[test]
fn boot_info_carries_memory_and_command_line() {
    let out = run_abi_test(&["--mem", "32M"], &["bootinfo", "with", "some", "args"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("abi_version=1\n"), "{text}");
    assert!(text.contains(&format!("mem_size={}\n", 32 << 20)), "{text}");
    assert!(text.contains("cmdline=bootinfo with some args\n"), "{text}");
    assert!(text.contains("net=none\n"), "{text}");
    let hz: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("counter_hz="))
        .and_then(|v| v.parse().ok())
        .expect("counter_hz");
    // A TSC runs at GHz; arm64's generic timer at 1 MHz or more (62.5 MHz
    // under QEMU, 1 GHz on Armv8.6 and later).
    assert!(hz >= 1_000_000, "counter frequency {hz} is implausible");
}

#[test]
fn walltime_is_the_hosts() {
    let out = run_abi_test(&[], &["walltime"]);
    let text = stdout(&out);
    let nanos: u128 = text
        .trim()
        .strip_prefix("walltime_nanos=")
        .and_then(|v| v.parse().ok())
        .expect(&text);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    assert!(
        now.abs_diff(nanos) < 60_000_000_000,
        "guest walltime {nanos} far from host {now}"
    );
}

#[test]
fn sse_runs_at_cpl3() {
    let out = run_abi_test(&[], &["sse"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "sse=6978.336839\n");
}

#[test]
fn poll_waits_for_its_deadline() {
    let out = run_abi_test(&[], &["poll", "100"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let waited: u64 = text
        .split("waited_ms=")
        .nth(1)
        .and_then(|v| v.trim().parse().ok())
        .expect(&text);
    assert!(
        (100..5000).contains(&waited),
        "poll(100 ms) returned after {waited} ms"
    );
    assert!(
        text.contains("ready=0"),
        "no device can be ready without --net: {text}"
    );
}

#[test]
fn panic_prints_its_message_and_fails() {
    let out = run_abi_test(&[], &["panic"]);
    assert_eq!(out.status.code(), Some(101));
    assert!(
        stdout(&out).contains("deliberate panic from abi-test"),
        "{}",
        stdout(&out)
    );
}

/// How the monitor's crash report names things, on each architecture: an
/// x86-64 guest at CPL 3 has no IDT, so any exception is a triple fault; an
/// arm64 guest's exception goes through the monitor's vectors.
struct Report {
    crash: &'static str,
    /// The faulting instruction's address.
    pc: &'static str,
    sp: &'static str,
    /// The faulting data or fetch address.
    fault_address: &'static str,
}

#[cfg(target_arch = "x86_64")]
const REPORT: Report = Report {
    crash: "guest crashed: triple fault",
    pc: "rip=0x",
    sp: "rsp=0x",
    fault_address: "cr2=0x",
};
#[cfg(target_arch = "aarch64")]
const REPORT: Report = Report {
    crash: "guest crashed: synchronous exception at EL1",
    pc: "elr_el1=0x",
    sp: "sp_el1=0x",
    fault_address: "far_el1=0x",
};

#[test]
fn crash_is_reported_with_registers() {
    let out = run_abi_test(&[], &["crash"]);
    assert_monitor_alive(&out);
    assert_eq!(out.status.code(), Some(GUEST_FAULT));
    let err = stderr(&out);
    assert!(err.contains(REPORT.crash), "{err}");
    assert!(
        err.contains(REPORT.pc) && err.contains(REPORT.sp) && err.contains(REPORT.fault_address),
        "{err}"
    );
}

/// A 64-bit register from the crash report.
fn register(err: &str, name: &str) -> u64 {
    let hex = err
        .split(name)
        .nth(1)
        .unwrap_or_else(|| panic!("{name} in report: {err}"));
    u64::from_str_radix(&hex[..16], 16).expect("register hex")
}

fn fault_address(err: &str) -> u64 {
    register(err, REPORT.fault_address)
}

#[test]
fn code_pages_are_not_writable() {
    let out = run_abi_test(&[], &["write-code"]);
    assert_eq!(out.status.code(), Some(GUEST_FAULT), "{}", stdout(&out));
    assert!(!stdout(&out).contains("W^X is broken"));
    assert!(
        fault_address(&stderr(&out)) >= 0x10_0000,
        "fault address is in the image"
    );
}

#[test]
fn page_tables_are_not_readable_from_cpl3() {
    let out = run_abi_test(&[], &["read-pagetables"]);
    assert_eq!(out.status.code(), Some(GUEST_FAULT), "{}", stdout(&out));
    assert!(!stdout(&out).contains("isolation is broken"));
    assert_eq!(fault_address(&stderr(&out)), 0x3000);
}

#[test]
fn data_pages_are_not_executable() {
    let out = run_abi_test(&[], &["exec-data"]);
    assert_eq!(out.status.code(), Some(GUEST_FAULT), "{}", stdout(&out));
    assert!(!stdout(&out).contains("NX is broken"));
    let err = stderr(&out);
    assert_eq!(
        register(&err, REPORT.pc),
        fault_address(&err),
        "the fault is the instruction fetch: {err}"
    );
}

#[test]
fn buffer_outside_guest_memory_stops_the_guest_not_the_monitor() {
    let out = run_abi_test(&[], &["bad-buffer"]);
    assert_monitor_alive(&out);
    assert_eq!(out.status.code(), Some(GUEST_FAULT));
    assert!(
        stderr(&out).contains("console_write: buffer 0x1001000+0x10 is outside"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stdout(&out).contains("still running"),
        "the guest must not continue"
    );
}

#[test]
fn argument_outside_guest_memory_stops_the_guest() {
    let out = run_abi_test(&[], &["bad-arg"]);
    assert_monitor_alive(&out);
    assert_eq!(out.status.code(), Some(GUEST_FAULT));
    assert!(
        stderr(&out).contains("walltime: argument structure at 0xfffffffb"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unknown_hypercall_stops_the_guest() {
    let out = run_abi_test(&[], &["bad-nr"]);
    assert_monitor_alive(&out);
    assert_eq!(out.status.code(), Some(GUEST_FAULT));
    assert!(
        stderr(&out).contains("unknown hypercall number 11"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn timings_name_every_phase() {
    let out = run_abi_test(&["--timings"], &["exit", "0"]);
    assert_eq!(out.status.code(), Some(0));
    let err = stderr(&out);
    for phase in ["vm_create=", "load=", "run=", "first_instruction=", "exit="] {
        assert!(err.contains(phase), "{phase} missing: {err}");
    }
    let first = err
        .split("first_instruction=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert!(
        first.parse::<u64>().is_ok(),
        "first instruction was not timed: {err}"
    );
}

/// Whether less than a page is free in the pipe whose read end is `fd`.
fn pipe_is_full(fd: std::os::fd::RawFd) -> bool {
    let mut unread: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int; F_GETPIPE_SZ takes no argument.
    let (rc, capacity) = unsafe {
        (
            libc::ioctl(fd, libc::FIONREAD, &mut unread),
            libc::fcntl(fd, libc::F_GETPIPE_SZ),
        )
    };
    rc == 0 && capacity > 0 && unread > capacity - 4096
}

/// SIGTERM stops the guest wherever it is, in guest code, blocked in poll
/// or writing to a console nobody reads, and the monitor exits 128 + 15
/// after printing its timings.
#[test]
fn sigterm_stops_a_guest_in_guest_code_or_in_poll() {
    require_root_and_kvm();
    for args in [&["spin"][..], &["poll", "60000"], &["chatter"]] {
        let mut cmd = Command::new(jitsu_bin());
        cmd.args(["run", "--timings"])
            .arg(guest("abi-test"))
            .arg("--")
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut monitor = Guarded::spawn(&mut cmd);
        if args[0] == "spin" {
            monitor.wait_for_output("spinning", Duration::from_secs(10));
        } else if args[0] == "chatter" {
            // Nobody reads the console from here on: the guest's writes
            // find the pipe full, and must not keep the monitor from stopping.
            let pipe = monitor.child().stdout.as_ref().unwrap().as_raw_fd();
            jitsu_e2e::wait_until("a full console pipe", || pipe_is_full(pipe));
        } else {
            std::thread::sleep(Duration::from_millis(200));
        }
        let pid = nix::unistd::Pid::from_raw(monitor.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let status = monitor.wait_timeout(Duration::from_secs(5));
        assert_eq!(status.code(), Some(143), "{args:?}: {status:?}");
        let mut err = String::new();
        std::io::Read::read_to_string(monitor.child().stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(
            err.contains("timings"),
            "{args:?}: a graceful stop prints timings: {err}"
        );
    }
}

/// A guest sends only as itself: frames with another source MAC or IPv4
/// address, ARP speaking for another, IPv6 or VLAN-tagged frames never
/// reach the link, and the monitor counts them; its own frames pass.
#[test]
fn a_guest_can_send_only_with_its_own_addresses() {
    use jitsu_e2e::netns::NetNs;
    use jitsu_e2e::packet::PacketSocket;
    let ns = NetNs::with_tap();
    let guest_mac = [0x02, 0x4a, 10, 77, 0, 2];
    let (out, frames) = ns.run_in(|| {
        let socket = PacketSocket::bind("jtap0").expect("packet socket");
        let mut cmd = ns.command(jitsu_bin());
        cmd.arg("run")
            .args(ns.jitsu_net_args())
            .arg(guest("abi-test"))
            .args(["--", "spoof"]);
        let out = run_with_timeout(&mut cmd, Duration::from_secs(20));
        // The guest's last frame is its own UDP datagram: once it is here,
        // everything sent before it has been delivered or refused.
        let mut frames = Vec::new();
        while let Some(frame) = socket.recv_incoming(Duration::from_secs(5)) {
            let last = frame.len() > 30
                && frame[6..12] == guest_mac
                && frame[12..14] == [0x08, 0x00]
                && frame[26..30] == [10, 77, 0, 2]
                && frame.ends_with(b"jitsu-egress-ok");
            frames.push(frame);
            if last {
                break;
            }
        }
        (out, frames)
    });
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("spoof: ret=0 frames=7"),
        "{}",
        stdout(&out)
    );
    let from_guest: Vec<&Vec<u8>> = frames
        .iter()
        .filter(|f| f.len() >= 14 && (f[6..12] == guest_mac || f[6..12] == [2, 0, 0, 0, 0, 0x99]))
        .collect();
    let describe = |f: &Vec<u8>| format!("{:02x?}", &f[..f.len().min(42)]);
    let arps: Vec<_> = from_guest
        .iter()
        .filter(|f| f[12..14] == [0x08, 0x06])
        .collect();
    let ipv4: Vec<_> = from_guest
        .iter()
        .filter(|f| f[12..14] == [0x08, 0x00])
        .collect();
    assert_eq!(
        (arps.len(), ipv4.len(), from_guest.len()),
        (1, 1, 2),
        "only the guest's own ARP and UDP pass: {:?}",
        from_guest.iter().map(|f| describe(f)).collect::<Vec<_>>()
    );
    assert_eq!(arps[0][6..12], guest_mac);
    assert_eq!(arps[0][28..32], [10, 77, 0, 2], "ARP for its own address");
    assert_eq!(ipv4[0][6..12], guest_mac);
    assert_eq!(ipv4[0][26..30], [10, 77, 0, 2], "from its own address");
    assert!(
        stderr(&out).contains("refused 5 frames the guest sent with another's address"),
        "{}",
        stderr(&out)
    );
}
