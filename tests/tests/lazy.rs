//! Lazy boot end to end: a parked hello-http in a private namespace, booted
//! by the first packet, handed the held SYN, parked again when idle.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use jitsu_e2e::http::{get, try_get, PARKINGS};
use jitsu_e2e::lazy::LazyHello;
use jitsu_e2e::packet::{arp_request, tcp_syn, PacketSocket};

const TIMEOUT: Duration = Duration::from_secs(10);

fn addr(server: &LazyHello) -> SocketAddr {
    SocketAddr::from((server.ns.guest_ip, 80))
}

#[test]
fn a_parked_service_answers_its_first_syn_without_a_retransmission() {
    let mut server = LazyHello::start(&[]);
    let parked = server.status();
    assert_eq!(
        (parked["state"].as_str(), parked["boots"].as_u64()),
        (Some("parked"), Some(0))
    );
    let a = addr(&server);
    let (reply, retrans) = server.ns.run_in(move || get(a));
    assert!(
        reply.starts_with("HTTP/1.1 200 OK") && reply.contains("Hello from hello-http"),
        "{reply}"
    );
    assert_eq!(retrans, 0, "the client sent exactly one SYN");
    let status = server.status();
    assert_eq!(status["state"], "running");
    assert_eq!(status["boots"], 1);
    assert!(
        status["held_frames"].as_u64().unwrap() >= 1,
        "the SYN was held: {status}"
    );
    assert!(
        status["arp_replies"].as_u64().unwrap() >= 1,
        "Synjitsu answered ARP: {status}"
    );
    assert!(
        status["last_boot_latency_us"].as_u64().is_some(),
        "{status}"
    );
    // The guest printed its banner only now: nothing ran while parked.
    let out = server.monitor.wait_for_output("listening", TIMEOUT);
    assert_eq!(out.matches("listening").count(), 1);
}

#[test]
fn no_guest_instruction_runs_until_the_trigger() {
    let mut server = LazyHello::start(&[]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.status()["boots"], 0);
    assert!(server.monitor.child().try_wait().unwrap().is_none());
    let booted = server.command("boot");
    assert!(
        matches!(booted["state"].as_str(), Some("booting" | "running")),
        "{booted}"
    );
    server
        .monitor
        .wait_for_output("hello-http: listening", TIMEOUT);
}

#[test]
fn control_boots_stops_and_reports() {
    let server = LazyHello::start(&[]);
    server.command("boot");
    server.wait_until(|s| s["state"] == "running", TIMEOUT);
    let stopped = server.command("stop");
    assert_eq!(stopped["state"], "parked", "{stopped}");
    assert_eq!(stopped["boots"], 1);
    let nonsense = jitsu_e2e_request(&server, "dance");
    assert!(nonsense.contains("unknown command"), "{nonsense}");
    let a = addr(&server);
    let (reply, _) = server.ns.run_in(move || get(a));
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "after a stop the next packet boots again"
    );
    assert_eq!(server.status()["boots"], 2);
}

fn jitsu_e2e_request(server: &LazyHello, command: &str) -> String {
    use std::io::BufRead;
    let mut s = std::os::unix::net::UnixStream::connect(&server.control).unwrap();
    s.write_all(format!("{command}\n").as_bytes()).unwrap();
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).unwrap();
    line
}

/// (fds, threads, RSS KiB, interfaces in the namespace), once the monitor
/// has noticed that the last control client went away.
type Counts = (Vec<String>, usize, u64, usize);

fn counts(server: &LazyHello) -> Counts {
    std::thread::sleep(Duration::from_millis(100));
    let pid = server.monitor.pid();
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| {
            std::fs::read_link(e.unwrap().path())
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        })
        .collect();
    fds.sort();
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    let links = std::process::Command::new("ip")
        .args(["-n", server.ns.name(), "-o", "link", "show"])
        .output()
        .unwrap();
    (
        fds,
        threads,
        rss_kib,
        String::from_utf8_lossy(&links.stdout).lines().count(),
    )
}

/// The same descriptors, threads and interfaces, and at most 4 MiB more
/// resident memory.
fn assert_nothing_grew(before: &Counts, after: &Counts) {
    assert_eq!(after.0, before.0, "file descriptors");
    assert_eq!(after.1, before.1, "threads");
    assert_eq!(after.3, before.3, "network interfaces in the namespace");
    assert!(
        after.2 < before.2 + 4096,
        "resident memory grew from {} to {} KiB",
        before.2,
        after.2
    );
}

#[test]
fn twenty_boot_idle_cycles_leak_nothing() {
    let server = LazyHello::start(&["--idle-timeout", "150ms"]);
    let a = addr(&server);
    let cycle = |n: u64| {
        let (reply, retrans) = server.ns.run_in(move || get(a));
        assert!(reply.starts_with("HTTP/1.1 200"), "cycle {n}: {reply}");
        assert_eq!(retrans, 0, "cycle {n}: one SYN");
        server.wait_until(|s| s["state"] == "parked" && s["boots"] == n, TIMEOUT);
    };
    for n in 1..=3 {
        cycle(n);
    }
    let before = counts(&server);
    for n in 4..=23 {
        cycle(n);
    }
    let after = counts(&server);
    assert_nothing_grew(&before, &after);
    assert_eq!(
        server.status()["boots"],
        23,
        "every cycle booted a fresh VM"
    );
}

#[test]
fn a_storm_of_syns_boots_once_and_stays_bounded() {
    let server = LazyHello::start(&[]);
    let before = counts(&server).2;
    let guest_mac = [0x02, 0x4a, 10, 77, 0, 2];
    let (host, guest) = (server.ns.host_ip, server.ns.guest_ip);
    let tap = server.ns.tap.clone();
    // From the namespace's own MAC and address, as a flood from this host
    // would be: the guest's answers reach the kernel, which resets them.
    let host_mac = server.ns.tap_mac();
    server.ns.run_in(move || {
        let socket = PacketSocket::bind(&tap).expect("packet socket");
        for i in 0..10_000u32 {
            let frame = tcp_syn(
                host_mac,
                guest_mac,
                host,
                guest,
                20_000 + (i % 40_000) as u16,
                80,
                i.wrapping_mul(2654435761),
            );
            socket.send(&frame).expect("send");
        }
    });
    let status = server.wait_until(|s| s["state"] == "running", TIMEOUT);
    assert_eq!(status["boots"], 1, "{status}");
    let after = counts(&server).2;
    assert!(
        after < before + 16 * 1024,
        "resident memory grew from {before} to {after} KiB"
    );
    // The guest works through the storm (its answers are reset by the
    // namespace's kernel); a client that retries a refused connect, as
    // clients do, gets its page.
    let a = addr(&server);
    let started = std::time::Instant::now();
    let reply = server.ns.run_in(move || loop {
        match TcpStream::connect_timeout(&a, TIMEOUT) {
            Ok(stream) => {
                drop(stream);
                break get(a).0;
            }
            Err(e) if started.elapsed() < TIMEOUT => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("still refused after {TIMEOUT:?}: {e}"),
        }
    });
    eprintln!("served again {:?} after the storm", started.elapsed());
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "a normal client after the storm: {reply}"
    );
    assert_eq!(server.status()["boots"], 1);
}

/// Parked for any time — never booted since start, or re-parked by idleness
/// and then left for less than, as long as, or many times the idle timeout —
/// the service answers its first SYN (no retransmission) and boots once.
#[test]
fn a_service_parked_for_any_time_answers_its_first_syn_and_boots_once() {
    const IDLE: Duration = Duration::from_secs(1);
    let server = LazyHello::start(&["--idle-timeout", "1s"]);
    let a = addr(&server);
    for (n, factor) in (1u64..).zip(PARKINGS) {
        if n > 1 {
            server.wait_until(|s| s["state"] == "parked" && s["boots"] == n - 1, TIMEOUT);
        }
        // The parking itself is the condition under test: time must pass.
        std::thread::sleep(IDLE.mul_f64(factor));
        let (reply, retrans) = server.ns.run_in(move || get(a));
        assert!(
            reply.starts_with("HTTP/1.1 200"),
            "parked {factor}x: {reply}"
        );
        assert_eq!(retrans, 0, "parked {factor}x the idle timeout: one SYN");
        assert_eq!(
            server.status()["boots"],
            n,
            "parked {factor}x the idle timeout: booted exactly once"
        );
    }
}

/// The idle clock of a VM starts at its boot: booted after a parking far
/// longer than the timeout, it runs until it has been idle that long.
#[test]
fn the_idle_clock_starts_at_the_boot() {
    let server = LazyHello::start(&["--idle-timeout", "2s"]);
    std::thread::sleep(Duration::from_secs(5));
    let booted = server.command("boot");
    assert_eq!(booted["boots"], 1);
    let status = server.wait_until(|s| s["state"] != "booting", TIMEOUT);
    assert_eq!(
        status["state"], "running",
        "not parked again at once: {status}"
    );
    server.wait_until(|s| s["state"] == "parked", TIMEOUT);
    assert_eq!(server.status()["boots"], 1);
}

/// One response on a keep-alive connection: the head, then Content-Length bytes.
fn read_response(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        reply.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&reply).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body)?;
    Ok(head + &String::from_utf8_lossy(&body))
}

/// A client that keeps its connection across a re-park (a keep-alive pool)
/// is reset by Synjitsu on its next request, well before a second, so it
/// reconnects at once; the new connection boots a fresh VM. Re-parked both
/// by `control stop` and by idleness.
#[test]
fn a_kept_alive_connection_to_a_reparked_vm_is_reset_at_once() {
    let server = LazyHello::start(&["--idle-timeout", "500ms"]);
    let a = addr(&server);
    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: lazy\r\n\r\n";
    for (n, how) in (1u64..).zip(["stop", "idle"]) {
        let mut stream = server
            .ns
            .run_in(move || TcpStream::connect_timeout(&a, TIMEOUT))
            .unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.write_all(REQUEST).unwrap();
        let first = read_response(&mut stream).expect("first response");
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        if how == "stop" {
            assert_eq!(server.command("stop")["state"], "parked");
        } else {
            server.wait_until(|s| s["state"] == "parked" && s["boots"] == n, TIMEOUT);
        }
        // Without the reset the read would wait for TCP to give up.
        stream
            .set_read_timeout(Some(Duration::from_millis(900)))
            .unwrap();
        let asked = std::time::Instant::now();
        // The reset may come before the request is even written: the
        // client's own delayed ACK of the first answer can reach Synjitsu
        // after the re-park, and is reset at once, as it should be.
        let err = stream
            .write_all(REQUEST)
            .and_then(|()| read_response(&mut stream).map(drop))
            .expect_err("the old VM is gone");
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset,
            "re-parked by {how}: {err} after {:?}",
            asked.elapsed()
        );
        eprintln!("re-parked by {how}: reset after {:?}", asked.elapsed());
        let (reply, retrans) = server.ns.run_in(move || get(a));
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert_eq!(retrans, 0);
        let status = server.status();
        assert_eq!(status["boots"], n + 1, "{status}");
        assert!(status["resets"].as_u64().unwrap() >= n, "{status}");
    }
}

/// A console nobody drains (containerd restarting, a slow log reader) never
/// holds up `control stop`, idle re-park or SIGTERM: what cannot be written
/// is dropped and counted.
#[test]
fn a_console_nobody_reads_never_holds_up_stop_idle_or_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("console");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Held open read-write by the test and never read: full after 64 KiB.
    let held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let console = std::process::Stdio::from(held.try_clone().unwrap());
    let mut server = LazyHello::start_kernel(
        &jitsu_e2e::guest("abi-test"),
        &["chatter"],
        &["--idle-timeout", "1s"],
        console,
    );
    let dropped = |s: &serde_json::Value| s["console_dropped_bytes"].as_u64().unwrap_or(0);
    server.command("boot");
    let full = server.wait_until(|s| dropped(s) > 0, TIMEOUT);
    let stopped = server.command("stop");
    assert_eq!(stopped["state"], "parked", "{stopped}");

    server.command("boot");
    server.wait_until(|s| dropped(s) > dropped(&full), TIMEOUT);
    let idled = server.wait_until(|s| s["state"] == "parked" && s["boots"] == 2, TIMEOUT);

    server.command("boot");
    server.wait_until(|s| dropped(s) > dropped(&idled), TIMEOUT);
    let pid = nix::unistd::Pid::from_raw(server.monitor.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = server.monitor.wait_timeout(TIMEOUT);
    assert_eq!(status.code(), Some(143), "{status:?}");
    drop(held);
}

/// The client's ARP entries go stale after about `ms` and are probed again
/// a second later: many more neighbour state changes than a minute-long
/// soak sees at the kernel's defaults (30 s, 5 s).
fn churn_neighbours(server: &LazyHello, ms: String) {
    let tap = server.ns.tap.clone();
    server.ns.run_in(move || {
        for (key, value) in [
            ("base_reachable_time_ms", ms.as_str()),
            ("delay_first_probe_time", "1"),
        ] {
            let path = format!("/proc/sys/net/ipv4/neigh/{tap}/{key}");
            std::fs::write(&path, value).unwrap_or_else(|e| panic!("{path}: {e}"));
        }
    });
}

/// A soak on real timelines: at least 200 boot/idle cycles, the gap before
/// each request drawn at random from 0.1x to 5x the idle timeout (so some
/// land while the VM runs, some just as it is re-parked, most after). Every
/// request is answered with one SYN, and nothing grows: descriptors,
/// threads, memory, interfaces. `JITSU_SOAK_SEED` repeats a run;
/// `JITSU_SOAK_NEIGH_MS` churns the client's ARP entries (see
/// [`churn_neighbours`]). A failed request shows the monitor's status and
/// the client's neighbour table.
#[test]
fn a_soak_of_random_gaps_around_the_idle_timeout() {
    const IDLE: Duration = Duration::from_millis(100);
    const BOOTS: u64 = 200;
    let seed = std::env::var("JITSU_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("JITSU_SOAK_SEED={seed}");
    let mut random = jitsu_e2e::Junk::new(seed);
    let server = LazyHello::start(&["--idle-timeout", "100ms"]);
    if let Ok(ms) = std::env::var("JITSU_SOAK_NEIGH_MS") {
        churn_neighbours(&server, ms);
    }
    let a = addr(&server);
    let mut before = None;
    let mut requests = 0;
    let boots = |server: &LazyHello| server.status()["boots"].as_u64().unwrap();
    while boots(&server) < BOOTS {
        assert!(
            requests < 4 * BOOTS,
            "{requests} requests made only {} boots",
            boots(&server)
        );
        let draw = u16::from_le_bytes(random.bytes(2).try_into().unwrap()) as f64 / 65536.0;
        std::thread::sleep(IDLE.mul_f64(0.1 + 4.9 * draw));
        let started = std::time::Instant::now();
        let answer = server.ns.run_in(move || try_get(a));
        requests += 1;
        let (reply, retrans) = answer.unwrap_or_else(|e| {
            panic!(
                "request {requests} (seed {seed}) failed after {:?}: {e}\nthe monitor: {}\nneighbours:\n{}",
                started.elapsed(),
                server.status(),
                server.ns.neighbours()
            )
        });
        assert!(
            reply.starts_with("HTTP/1.1 200"),
            "request {requests}: {reply}"
        );
        assert_eq!(retrans, 0, "request {requests} (seed {seed}): one SYN");
        if before.is_none() && boots(&server) >= 10 {
            // Counted parked, as at the end.
            server.wait_until(|s| s["state"] == "parked", TIMEOUT);
            before = Some(counts(&server));
        }
    }
    server.wait_until(|s| s["state"] == "parked", TIMEOUT);
    let before = before.expect("counted after 10 boots");
    let after = counts(&server);
    assert_nothing_grew(&before, &after);
    eprintln!("{requests} requests, {} boots", boots(&server));
}

/// The kernel hands the monitor only frames for its guest: on a busy link,
/// ARP for the neighbours and packets to other addresses never wake it
/// (nor count as dropped); an ARP for the service still does.
#[test]
fn only_frames_for_the_guest_reach_the_monitor() {
    let server = LazyHello::start(&[]);
    let before = server.status();
    let (host, guest) = (server.ns.host_ip, server.ns.guest_ip);
    let (tap, host_mac) = (server.ns.tap.clone(), server.ns.tap_mac());
    server.ns.run_in(move || {
        let socket = PacketSocket::bind(&tap).expect("packet socket");
        for i in 0..50u8 {
            let other = std::net::Ipv4Addr::new(10, 77, 0, 100 + i);
            socket.send(&arp_request(host_mac, host, other)).unwrap();
            let syn = tcp_syn(host_mac, [0xff; 6], host, other, 40_000, 80, i as u32);
            socket.send(&syn).unwrap();
        }
        socket.send(&arp_request(host_mac, host, guest)).unwrap();
    });
    let after = server.wait_until(
        |s| s["arp_replies"].as_u64() > before["arp_replies"].as_u64(),
        TIMEOUT,
    );
    assert_eq!(
        after["dropped_frames"], before["dropped_frames"],
        "frames for others never reached Synjitsu: {after}"
    );
    assert_eq!(after["boots"], 0, "nor booted anything");
}

/// A client's broadcast ARP for a running guest is the guest's to answer:
/// asked every 100 ms for 2 s (four times its idle timeout), the guest
/// answers each one itself (Synjitsu never does) and stays up.
#[test]
fn a_running_guest_answers_every_arp_and_is_kept_up_by_them() {
    const ASKS: u32 = 20;
    let server = LazyHello::start(&["--idle-timeout", "500ms"]);
    server.command("boot");
    server.wait_until(|s| s["state"] == "running", TIMEOUT);
    let (host, guest) = (server.ns.host_ip, server.ns.guest_ip);
    let (tap, host_mac) = (server.ns.tap.clone(), server.ns.tap_mac());
    let answered = server.ns.run_in(move || {
        let socket = PacketSocket::bind(&tap).expect("packet socket");
        let is_reply = |f: &[u8]| {
            f.len() >= 32
                && f[12..14] == [8, 6]
                && f[20..22] == [0, 2]
                && f[28..32] == guest.octets()
        };
        let mut answered = 0;
        for _ in 0..ASKS {
            let next = Instant::now() + Duration::from_millis(100);
            socket.send(&arp_request(host_mac, host, guest)).unwrap();
            while let Some(frame) =
                socket.recv_incoming(next.saturating_duration_since(Instant::now()))
            {
                if is_reply(&frame) {
                    answered += 1;
                    break;
                }
            }
            // The client's pace, not a wait for a condition.
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        answered
    });
    let status = server.status();
    assert_eq!(answered, ASKS, "{status}");
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["boots"], 1, "{status}");
    assert_eq!(
        status["arp_replies"], 0,
        "Synjitsu never stood in: {status}"
    );
}

/// A parked VM's code and read-only data are the image file's own pages
/// (mapped read-only, shared with every VM of the image), not copies.
#[test]
fn a_parked_vm_maps_its_code_from_the_image_file() {
    let server = LazyHello::start(&[]);
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", server.monitor.pid())).unwrap();
    let kernel = jitsu_e2e::guest("hello-http").canonicalize().unwrap();
    let mut mappings = 0;
    let mut lines = smaps.lines();
    while let Some(line) = lines.next() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let is_header = fields
            .first()
            .is_some_and(|f| f.contains('-') && !f.ends_with(':'));
        if !is_header || fields.get(5).map(std::path::Path::new) != Some(kernel.as_path()) {
            continue;
        }
        assert_eq!(fields[1], "r--p", "read-only, private: {line}");
        let anonymous = lines
            .by_ref()
            .find_map(|l| l.strip_prefix("Anonymous:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
        assert_eq!(anonymous, Some(0), "no private copy: {line}");
        mappings += 1;
    }
    // Code and read-only data lie next to each other, in the file and in the
    // guest: the kernel may merge them into one mapping.
    assert!(
        mappings >= 1,
        "code and read-only data are mapped from {}",
        kernel.display()
    );
}
