//! The Xen suite: run inside the Xen test bed's dom0 (`tests/tests/xen.rs`
//! boots it and runs this there; `make xen-shell` gives one by hand). Each
//! test runs `jitsu run --hypervisor xen` as a user would and checks what it
//! prints and how it ends, then that Xen holds no domain and dom0 no vif of
//! ours. The binaries and guests come from `$JITSU_BIN`, `$JITSU_XEN_MONITOR`
//! and `$JITSU_XEN_GUESTS`; the stock kernel from `$JITSU_LINUX_KERNEL` and
//! `$JITSU_LINUX_INITRD`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};

mod conduit;
mod containerd;
mod cri;
mod lazy;

type Result = std::result::Result<(), Failed>;

fn env_path(var: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(var).unwrap_or_else(|| panic!("${var} is not set")))
}

fn guest(name: &str) -> PathBuf {
    env_path("JITSU_XEN_GUESTS").join(name)
}

/// Emulated Xen is slow: a unikernel takes about a second to build, a Linux
/// guest half a minute or more to print its first line.
const TIMEOUT: Duration = Duration::from_secs(120);

fn jitsu(args: &[&str]) -> Command {
    let mut cmd = Command::new(env_path("JITSU_BIN"));
    cmd.arg("run").arg("--hypervisor").arg("xen").args(args);
    cmd
}

fn test_name(tag: &str) -> String {
    format!("jitsu-t-{tag}-{}", std::process::id())
}

/// Runs to the end, with a time limit (SIGTERM, then the test fails).
fn run(mut cmd: Command) -> std::result::Result<Output, Failed> {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut monitor = Monitor::adopt(child);
    let status = monitor.wait(TIMEOUT)?;
    let (stdout, stderr) = monitor.take_output();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// A running monitor: its output read by threads as it comes; ended with
/// SIGTERM (never SIGKILL, which would leave its domain behind) on drop.
struct Monitor {
    child: Child,
    lines: mpsc::Receiver<String>,
    err_lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

impl Monitor {
    fn adopt(mut child: Child) -> Monitor {
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout piped");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (err_tx, err_lines) = mpsc::channel();
        let err = child.stderr.take().expect("stderr piped");
        let stderr = std::thread::spawn(move || {
            let mut all = Vec::new();
            for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
                all.extend_from_slice(line.as_bytes());
                all.push(b'\n');
                let _ = err_tx.send(line);
            }
            all
        });
        Monitor {
            child,
            lines,
            err_lines,
            stdout: Vec::new(),
            stderr,
        }
    }

    /// Waits for a stderr line containing `needle` (the monitor's log).
    fn wait_for_log(&mut self, needle: &str) -> Result {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.err_lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(()),
                Ok(_) => {}
                Err(_) => return Err(format!("the monitor never logged {needle:?}").into()),
            }
        }
    }

    fn spawn(mut cmd: Command) -> std::result::Result<Monitor, Failed> {
        Ok(Monitor::adopt(
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?,
        ))
    }

    /// Waits for a stdout line containing `needle`.
    fn wait_for_line(&mut self, needle: &str) -> std::result::Result<String, Failed> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(_) => {
                    return Err(format!(
                        "no line with {needle:?}; stdout so far: {:?}",
                        self.stdout
                    )
                    .into())
                }
            }
        }
    }

    fn terminate(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }

    fn wait(&mut self, timeout: Duration) -> std::result::Result<std::process::ExitStatus, Failed> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.terminate();
                return Err(format!("the monitor did not end within {timeout:?}").into());
            }
            // The child's exit cannot be waited for with a deadline otherwise.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn take_output(&mut self) -> (Vec<u8>, Vec<u8>) {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stdout.push(line);
        }
        let stdout = self
            .stdout
            .iter()
            .flat_map(|l| format!("{l}\n").into_bytes())
            .collect();
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(Vec::new));
        (stdout, stderr.join().unwrap_or_default())
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
            let _ = self.child.wait();
        }
    }
}

/// Polls a lazy monitor's status on its control socket until `pred` holds.
fn wait_for_status(
    control: &std::path::Path,
    pred: impl Fn(&serde_json::Value) -> bool,
    timeout: Duration,
) -> std::result::Result<serde_json::Value, Failed> {
    let deadline = Instant::now() + timeout;
    let mut last = serde_json::Value::Null;
    while Instant::now() < deadline {
        let reply = jitsu_e2e::lazy::try_request(control, "status");
        if let Some(status) = reply.ok().and_then(|r| serde_json::from_str(&r).ok()) {
            if pred(&status) {
                return Ok(status);
            }
            last = status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("status never reached the condition; last {last}").into())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn expect_status(out: &Output, code: i32) -> Result {
    if out.status.code() != Some(code) {
        return Err(format!(
            "exit status {:?}, want {code}\nstdout: {}\nstderr: {}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        )
        .into());
    }
    Ok(())
}

fn expect_contains(what: &str, haystack: &[u8], needle: &str) -> Result {
    if !text(haystack).contains(needle) {
        return Err(format!("{what} lacks {needle:?}: {}", text(haystack)).into());
    }
    Ok(())
}

/// Our domains that Xen still holds (by name: the tests name them jitsu-t-*).
fn our_domains() -> Vec<String> {
    let out = Command::new("xl").arg("list").output().expect("xl list");
    text(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with("jitsu-"))
        .map(String::from)
        .collect()
}

fn our_vifs() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-br", "link"])
        .output()
        .expect("ip link");
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        // The vifs, the TAPs lazy monitors stand in with, and a Xen pod's
        // bridge and veth in dom0.
        .filter(|name| {
            ["vif", "jsi", "jb", "jv"]
                .iter()
                .any(|p| name.starts_with(p))
        })
        .map(String::from)
        .collect()
}

/// Runs `body`, then fails if it left a domain or a vif (and removes them).
fn leaves_nothing(body: impl FnOnce() -> Result) -> Result {
    let result = body();
    let domains = our_domains();
    for name in &domains {
        let _ = Command::new("xl").args(["destroy", name]).status();
    }
    let vifs = our_vifs();
    result?;
    if !domains.is_empty() || !vifs.is_empty() {
        return Err(format!("left behind: domains {domains:?}, vifs {vifs:?}").into());
    }
    Ok(())
}

/// A bridge of the test's own, removed when dropped.
struct Bridge(String);

impl Bridge {
    fn new(tag: &str) -> Bridge {
        Bridge(format!("jxb{tag}{}", std::process::id() % 10000))
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

fn console_text_reaches_stdout() -> Result {
    leaves_nothing(|| {
        let name = test_name("hello");
        let mut cmd = jitsu(&["--domain-name", &name]);
        cmd.arg(guest("abi-test")).args(["--", "hello"]);
        let out = run(cmd)?;
        expect_status(&out, 0)?;
        expect_contains("stdout", &out.stdout, "hello from abi-test")
    })
}

fn exit_status_of_a_halting_guest() -> Result {
    leaves_nothing(|| {
        for (args, status) in [
            (&["exit", "7"][..], 7),
            (&["exit", "0"], 0),
            (&["exit", "255"], 255),
        ] {
            let mut cmd = jitsu(&["--domain-name", &test_name("exit")]);
            cmd.arg(guest("abi-test")).arg("--").args(args);
            expect_status(&run(cmd)?, status)?;
        }
        let mut cmd = jitsu(&["--domain-name", &test_name("panic")]);
        cmd.arg(guest("abi-test")).args(["--", "panic"]);
        let out = run(cmd)?;
        expect_status(&out, 101)?;
        expect_contains("stdout", &out.stdout, "deliberate panic from abi-test")
    })
}

fn a_crashing_guest_is_reported_with_its_registers() -> Result {
    leaves_nothing(|| {
        let mut cmd = jitsu(&["--domain-name", &test_name("crash")]);
        cmd.arg(guest("abi-test")).args(["--", "crash"]);
        let out = run(cmd)?;
        expect_status(&out, 126)?;
        expect_contains("stderr", &out.stderr, "guest crashed")?;
        // The program counter, by its name on this architecture.
        let pc = if cfg!(target_arch = "aarch64") {
            "pc=0x"
        } else {
            "rip=0x"
        };
        expect_contains("stderr", &out.stderr, pc)
    })
}

/// A minimal ELF64 header for another architecture.
fn foreign_elf(machine: u16) -> Vec<u8> {
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little-endian
    elf[6] = 1;
    elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf[18..20].copy_from_slice(&machine.to_le_bytes());
    elf[20..24].copy_from_slice(&1u32.to_le_bytes());
    elf[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    elf
}

fn bad_images_are_refused_and_leave_no_domain() -> Result {
    leaves_nothing(|| {
        let dir = tempfile::tempdir()?;
        let garbage = dir.path().join("garbage");
        std::fs::write(&garbage, b"not a kernel at all")?;
        let arm = dir.path().join("arm64.elf");
        std::fs::write(&arm, foreign_elf(183))?;
        let kvm_guest = env_path("JITSU_KVM_GUESTS").join("abi-test");
        // On arm64 libxl boots only Images: every ELF is refused as one.
        let (elf, no_note, kvm) = if cfg!(target_arch = "aarch64") {
            (
                "boots an arm64 Image",
                "boots an arm64 Image",
                "boots an arm64 Image",
            )
        } else {
            ("not x86-64", "no Xen PHYS32_ENTRY note", "--features xen")
        };
        let cases: [(PathBuf, &[&str], &str); 6] = [
            (garbage, &[], "neither an ELF, a Linux bzImage"),
            (arm, &[], elf),
            (PathBuf::from("/bin/true"), &[], no_note),
            (kvm_guest, &[], kvm),
            (guest("abi-test"), &["--mem", "3M"], "out of range"),
            (guest("abi-test"), &["--mem", "5G"], "out of range"),
        ];
        for (kernel, extra, why) in cases {
            let name = test_name("bad");
            let mut cmd = jitsu(&["--domain-name", &name]);
            cmd.args(extra).arg(&kernel).args(["--", "hello"]);
            let out = run(cmd)?;
            expect_status(&out, 125)?;
            expect_contains("stderr", &out.stderr, why)?;
        }
        Ok(())
    })
}

fn hello_http_answers_curl_from_dom0() -> Result {
    let bridge = Bridge::new("h");
    leaves_nothing(|| {
        let mut cmd = jitsu(&[
            "--domain-name",
            &test_name("http"),
            "--net",
            &bridge.0,
            "--ip",
            "10.91.0.2/24",
            "--gw",
            "10.91.0.1",
        ]);
        cmd.arg(guest("hello-http")).args(["--", "xen-hello"]);
        let mut monitor = Monitor::spawn(cmd)?;
        monitor.wait_for_line("listening on 10.91.0.2:80")?;
        let curl = |path: &str| {
            Command::new("curl")
                .args([
                    "-s",
                    "-m",
                    "30",
                    "-w",
                    "\n%{http_code}",
                    &format!("http://10.91.0.2{path}"),
                ])
                .output()
        };
        let page = text(&curl("/")?.stdout);
        if !page.ends_with("\n200") || !page.contains("Hello from xen-hello") {
            return Err(format!("GET / gave {page:?}").into());
        }
        let missing = text(&curl("/missing")?.stdout);
        if !missing.ends_with("\n404") {
            return Err(format!("GET /missing gave {missing:?}").into());
        }
        // 64 connections at once, each its own request.
        let urls: Vec<String> = (0..64)
            .map(|i| format!("http://10.91.0.2/?client={i}"))
            .collect();
        let out = Command::new("curl")
            .args([
                "-s",
                "-m",
                "60",
                "--parallel",
                "--parallel-immediate",
                "--parallel-max",
                "64",
            ])
            .args(["-o", "/dev/null", "-w", "%{http_code}\n"])
            .args(&urls)
            .output()?;
        let codes = text(&out.stdout);
        let ok = codes.lines().filter(|c| *c == "200").count();
        if ok != 64 {
            return Err(format!("{ok} of 64 concurrent requests got 200: {codes:?}").into());
        }
        monitor.terminate();
        let status = monitor.wait(TIMEOUT)?;
        if status.code() != Some(128 + 15) {
            return Err(
                format!("after SIGTERM the monitor ended with {status:?}, want 143").into(),
            );
        }
        Ok(())
    })
}

fn sigterm_during_boot_destroys_the_domain() -> Result {
    leaves_nothing(|| {
        let name = test_name("early");
        let mut cmd = jitsu(&["--domain-name", &name]);
        cmd.env("JITSU_LOG", "jitsu_xen=debug");
        cmd.arg(guest("abi-test")).args(["--", "spin"]);
        let mut monitor = Monitor::spawn(cmd)?;
        // The moment the domain exists (built and paused, about to be
        // unpaused), the monitor is told to stop.
        monitor.wait_for_log("domain built")?;
        monitor.terminate();
        let status = monitor.wait(TIMEOUT)?;
        if status.code() != Some(128 + 15) {
            return Err(format!("ended with {status:?}, want 143").into());
        }
        Ok(())
    })
}

fn a_stock_linux_kernel_boots_through_the_same_backend() -> Result {
    leaves_nothing(|| {
        let kernel = env_path("JITSU_LINUX_KERNEL");
        let initrd = env_path("JITSU_LINUX_INITRD");
        let mut cmd = jitsu(&[
            "--domain-name",
            &test_name("linux"),
            "--mem",
            "256M",
            "--initrd",
        ]);
        cmd.arg(&initrd)
            .arg(&kernel)
            .args(["--", "console=hvc0", "quiet"]);
        let out = run(cmd)?;
        expect_contains("stdout", &out.stdout, "jitsu-linux-guest-ok")?;
        expect_status(&out, 0)
    })
}

fn xenstore(args: &[&str]) -> std::result::Result<String, Failed> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if !out.status.success() {
        return Err(format!("{args:?}: {}", text(&out.stderr)).into());
    }
    Ok(text(&out.stdout))
}

/// `jitsu daemon` on Xen's own xenstored (oxenstored, as Debian starts it):
/// a service entry written with Xen's tools is answered in DNS, and Xen's
/// tools see the registry's layout.
fn dns_is_served_from_xens_own_xenstored() -> Result {
    let name = format!("xs{}", std::process::id());
    let base = format!("/jitsu/services/{name}");
    xenstore(&[
        "xenstore-write",
        &format!("{base}/ip"),
        "10.94.0.7",
        &format!("{base}/state"),
        "running",
    ])?;
    let mut cmd = Command::new(env_path("JITSU_BIN"));
    cmd.args([
        "daemon",
        "--xenstore-socket",
        "/run/xenstored/socket",
        "--dns-listen",
        "127.0.0.1:5354",
    ])
    .args(["--allow", "127.0.0.0/8"])
    .env("JITSU_LOG", "debug");
    let mut daemon = Monitor::spawn(cmd)?;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    // The daemon answers once it listens, and knows the entry once it has
    // read the registry: ask until the answer names the entry, or give up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut answer = Vec::new();
    while Instant::now() < deadline {
        socket.send_to(
            &jitsu_e2e::packet::dns_a_query(7, &format!("{name}.jitsu.internal")),
            "127.0.0.1:5354",
        )?;
        let mut reply = [0u8; 512];
        if let Ok(n) = socket.recv(&mut reply) {
            answer = reply[..n].to_vec();
            if answer[3] & 0xf == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let listing = xenstore(&["xenstore-ls", "-fp", "/jitsu"]);
    let _ = xenstore(&["xenstore-rm", &base]);
    daemon.terminate();
    let _ = daemon.wait(TIMEOUT);
    let (_, log) = daemon.take_output();
    if answer.len() < 12 {
        return Err(format!("the daemon never answered\ndaemon: {}", text(&log)).into());
    }
    let (rcode, count) = (answer[3] & 0xf, u16::from_be_bytes([answer[6], answer[7]]));
    if rcode != 0 || count != 1 || !answer.ends_with(&[10, 94, 0, 7]) {
        return Err(format!(
            "the answer is not one A record of 10.94.0.7: {answer:?}\nstore: {listing:?}\ndaemon: {}",
            text(&log)
        )
        .into());
    }
    let listing = listing?;
    if !listing.contains(&format!("{base}/ip = \"10.94.0.7\"")) {
        return Err(format!("xenstore-ls does not show the entry: {listing}").into());
    }
    Ok(())
}

fn main() {
    let mut args = Arguments::from_args();
    // One at a time: each test checks that Xen holds no domain of ours after it.
    args.test_threads = Some(1);
    let tests = vec![
        Trial::test("console_text_reaches_stdout", console_text_reaches_stdout),
        Trial::test(
            "exit_status_of_a_halting_guest",
            exit_status_of_a_halting_guest,
        ),
        Trial::test(
            "a_crashing_guest_is_reported_with_its_registers",
            a_crashing_guest_is_reported_with_its_registers,
        ),
        Trial::test(
            "bad_images_are_refused_and_leave_no_domain",
            bad_images_are_refused_and_leave_no_domain,
        ),
        Trial::test(
            "hello_http_answers_curl_from_dom0",
            hello_http_answers_curl_from_dom0,
        ),
        Trial::test(
            "sigterm_during_boot_destroys_the_domain",
            sigterm_during_boot_destroys_the_domain,
        ),
        Trial::test(
            "a_stock_linux_kernel_boots_through_the_same_backend",
            a_stock_linux_kernel_boots_through_the_same_backend,
        ),
        Trial::test(
            "dns_is_served_from_xens_own_xenstored",
            dns_is_served_from_xens_own_xenstored,
        ),
        Trial::test(
            "a_parked_domain_answers_its_first_syn_without_a_retransmission",
            lazy::a_parked_domain_answers_its_first_syn_without_a_retransmission,
        ),
        Trial::test(
            "a_domain_parked_for_any_time_answers_its_first_syn_and_boots_once",
            lazy::a_domain_parked_for_any_time_answers_its_first_syn_and_boots_once,
        ),
        Trial::test(
            "a_crowd_at_a_parked_domain_boots_it_once",
            lazy::a_crowd_at_a_parked_domain_boots_it_once,
        ),
        Trial::test(
            "a_kept_alive_connection_to_a_reparked_domain_is_reset_at_once",
            lazy::a_kept_alive_connection_to_a_reparked_domain_is_reset_at_once,
        ),
        Trial::test(
            "a_domain_parked_at_its_ready_point_answers_its_first_syn",
            lazy::a_domain_parked_at_its_ready_point_answers_its_first_syn,
        ),
        Trial::test(
            "lookups_of_a_parked_domains_name_boot_it_once",
            lazy::lookups_of_a_parked_domains_name_boot_it_once,
        ),
        Trial::test(
            "ctr_run_parks_a_domain_that_curl_boots_and_idleness_parks_again",
            containerd::ctr_run_parks_a_domain_that_curl_boots_and_idleness_parks_again,
        ),
        Trial::test(
            "the_node_picks_xen_from_an_image_with_both_builds_and_refuses_kvm_ones",
            containerd::the_node_picks_xen_from_an_image_with_both_builds_and_refuses_kvm_ones,
        ),
        Trial::test(
            "the_domain_of_a_killed_monitor_goes_at_delete",
            containerd::the_domain_of_a_killed_monitor_goes_at_delete,
        ),
        Trial::test(
            "pods_are_xen_domains_on_their_own_addresses",
            cri::pods_are_xen_domains_on_their_own_addresses,
        ),
        Trial::test(
            "conduit_between_domains_boots_a_parked_one_once",
            conduit::conduit_between_domains_boots_a_parked_one_once,
        ),
        Trial::test(
            "conduit_listener_serves_xens_own_libxenvchan_client",
            conduit::conduit_listener_serves_xens_own_libxenvchan_client,
        ),
        Trial::test(
            "conduit_client_reaches_xens_own_libxenvchan_server",
            conduit::conduit_client_reaches_xens_own_libxenvchan_server,
        ),
    ];
    libtest_mimic::run(&args, tests).exit();
}
