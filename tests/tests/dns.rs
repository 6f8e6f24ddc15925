//! The DNS directory end to end: `jitsu daemon`, a lazy hello-http
//! registered as `hello`, and `dig` in a private namespace.

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jitsu_e2e::node::Node;
use jitsu_e2e::packet::dns_a_query;
use jitsu_e2e::process::Guarded;
use jitsu_e2e::{jitsu_bin, xenstore_write};

fn status(dig: &str) -> &str {
    dig.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
}

fn answers(dig: &str) -> usize {
    dig.split("ANSWER: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn record_types_over_udp_and_tcp() {
    let node = Node::start(false, &[]);
    for transport in [&[][..], &["+tcp"]] {
        let a = node.dig("hello.jitsu.internal", "A", transport);
        assert_eq!((status(&a), answers(&a)), ("NOERROR", 1), "{a}");
        assert!(
            a.contains("10.77.0.2") && a.contains(" aa"),
            "authoritative answer: {a}"
        );
        let aaaa = node.dig("hello.jitsu.internal", "AAAA", transport);
        assert_eq!((status(&aaaa), answers(&aaaa)), ("NOERROR", 0), "{aaaa}");
        let nx = node.dig("nobody.jitsu.internal", "A", transport);
        assert_eq!(status(&nx), "NXDOMAIN", "{nx}");
        assert!(nx.contains("SOA"), "negative answers carry the SOA: {nx}");
        let soa = node.dig("jitsu.internal", "SOA", transport);
        assert_eq!((status(&soa), answers(&soa)), ("NOERROR", 1), "{soa}");
        let ns = node.dig("jitsu.internal", "NS", transport);
        assert!(ns.contains("ns.jitsu.internal."), "{ns}");
        let outside = node.dig("example.com", "A", transport);
        assert_eq!(status(&outside), "REFUSED", "{outside}");
    }
}

#[test]
fn names_outside_the_zone_are_forwarded() {
    let node = Node::start(false, &["--forward", "127.0.0.2:53"]);
    // The upstream: another directory, for another zone, in the same namespace.
    let (_upstream, upstream_store) = node.start_upstream();
    for (key, value) in [("ip", "10.1.2.3"), ("state", "running")] {
        assert!(xenstore_write(
            &upstream_store,
            &format!("/jitsu/services/far/{key}"),
            value
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let far = node.dig("far.upstream.test", "A", &[]);
        if answers(&far) == 1 {
            assert!(far.contains("10.1.2.3"), "{far}");
            break;
        }
        assert!(Instant::now() < deadline, "never forwarded: {far}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        status(&node.dig("hello.jitsu.internal", "A", &[])),
        "NOERROR"
    );
}

#[test]
fn fifty_concurrent_lookups_boot_once_and_the_answer_works() {
    let node = Node::start(false, &[]);
    let answered = node.ns.run_in(|| {
        let sockets: Vec<UdpSocket> = (0..50).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        for (i, s) in sockets.iter().enumerate() {
            s.send_to(&dns_a_query(i as u16, "hello.jitsu.internal"), "127.0.0.1:53").unwrap();
        }
        sockets
            .iter()
            .filter(|s| {
                s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = [0u8; 512];
                matches!(s.recv(&mut buf), Ok(n) if n > 12 && buf[3] & 0x0f == 0 && u16::from_be_bytes([buf[6], buf[7]]) == 1)
            })
            .count()
    });
    assert_eq!(
        answered, 50,
        "every lookup answered at once, with the address"
    );
    let running = node.wait_state("running");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        node.hello().unwrap()["boots"],
        1,
        "exactly one boot: {running}"
    );

    let short = node.dig("hello.jitsu.internal", "A", &["+short"]);
    let ip = short.trim();
    assert_eq!(node.ns.curl_status(&format!("http://{ip}/")), "200");
}

#[test]
fn a_lookup_alone_boots_a_parked_service() {
    let node = Node::start(false, &[]);
    assert_eq!(node.hello().unwrap()["boots"], 0);
    assert_eq!(answers(&node.dig("hello.jitsu.internal", "A", &[])), 1);
    let running = node.wait_state("running");
    assert_eq!(running["boots"], 1);
}

#[test]
fn garbage_never_stops_the_server() {
    let node = Node::start(false, &[]);
    node.ns.run_in(|| {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut garbage = jitsu_e2e::Junk::new(0x1234_5678_9abc_def0_u64);
        for round in 0..300 {
            let len = 1 + (round * 37) % 600;
            let junk = garbage.bytes(len);
            let _ = udp.send_to(&junk, "127.0.0.1:53");
        }
        let valid = dns_a_query(7, "hello.jitsu.internal");
        for cut in [1, 5, 12, valid.len() - 1] {
            let _ = udp.send_to(&valid[..cut], "127.0.0.1:53");
        }
        let _ = udp.send_to(&vec![0xab; 65_000], "127.0.0.1:53");
        // TCP: a length prefix promising more than comes, then a huge one.
        if let Ok(mut tcp) = TcpStream::connect("127.0.0.1:53") {
            let _ = tcp.write_all(&[0x01, 0x00, 0xde, 0xad]);
        }
        if let Ok(mut tcp) = TcpStream::connect("127.0.0.1:53") {
            let _ = tcp.write_all(&[0xff, 0xff]);
            let _ = tcp.write_all(&vec![0u8; 70_000]);
        }
    });
    assert!(node.daemon.child_alive(), "the daemon is still running");
    for transport in [&[][..], &["+tcp"]] {
        let a = node.dig("hello.jitsu.internal", "A", transport);
        assert_eq!((status(&a), answers(&a)), ("NOERROR", 1), "{a}");
    }
}

#[test]
fn the_name_resolves_again_within_a_second_of_a_xenstore_restart() {
    let mut node = Node::start(true, &[]);
    assert_eq!(answers(&node.dig("hello.jitsu.internal", "A", &[])), 1);
    node.wait_state("running");
    drop(node.xenstored.take()); // SIGKILL: the registry is gone with it
    let restarted = Instant::now();
    node.xenstored = Some(Guarded::spawn(
        Command::new(jitsu_bin())
            .arg("xenstored")
            .arg("--socket")
            .arg(&node.xenstore)
            .stderr(Stdio::null()),
    ));
    // The directory keeps answering from what it knew while XenStore is
    // away; what matters is that the registry itself has the name again.
    let entry = loop {
        if let Some(entry) = node.hello() {
            break entry;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "never registered again"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let a = node.dig("hello.jitsu.internal", "A", &["+time=1"]);
    let took = restarted.elapsed();
    assert_eq!(answers(&a), 1, "{a}");
    assert!(
        took < Duration::from_secs(1),
        "registered and resolved again after {took:?}"
    );
    assert_eq!(
        entry["state"], "running",
        "registered again with its current state"
    );
}

#[test]
fn a_name_registered_while_the_directory_was_disconnected_resolves() {
    let mut node = Node::start(true, &[]);
    drop(node.xenstored.take());
    node.xenstored = Some(Guarded::spawn(
        Command::new(jitsu_bin())
            .arg("xenstored")
            .arg("--socket")
            .arg(&node.xenstore)
            .stderr(Stdio::null()),
    ));
    let restarted = Instant::now();
    for (key, value) in [("ip", "10.77.0.9"), ("state", "running")] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !xenstore_write(
            &node.xenstore,
            &format!("/jitsu/services/late/{key}"),
            value,
        ) {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    loop {
        let a = node.dig("late.jitsu.internal", "A", &["+time=1"]);
        if answers(&a) == 1 {
            assert!(a.contains("10.77.0.9"), "{a}");
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(2),
            "the directory did not follow the new daemon: {a}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_entry_goes_when_the_monitor_ends() {
    let mut node = Node::start(false, &[]);
    assert!(node.hello().is_some());
    let mut monitor = node.monitor.take().expect("a monitor");
    let pid = nix::unistd::Pid::from_raw(monitor.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(
        monitor.wait_timeout(Duration::from_secs(5)).code(),
        Some(143)
    );
    assert!(node.hello().is_none(), "{:?}", node.ps());
    assert_eq!(
        status(&node.dig("hello.jitsu.internal", "A", &[])),
        "NXDOMAIN"
    );
}

/// A boot request names the parking it is for: one for an earlier
/// generation (a late watch event, a lookup from before a re-park) or one
/// that names none is ignored; one for the current generation boots. No
/// wall clock is compared, so an NTP step cannot disable booting on lookup.
#[test]
fn a_boot_request_for_another_parking_is_ignored() {
    let node = Node::start(false, &[]);
    let ignored = |s: &serde_json::Value| s["boot_requests_ignored"].as_u64().unwrap();
    // Each request waits until the monitor has seen the one before.
    let request = |value: &str| {
        let before = ignored(&node.control("status"));
        assert!(xenstore_write(
            &node.xenstore,
            "/jitsu/services/hello/boot",
            value
        ));
        before
    };
    let parked = node.wait_state("parked");
    assert_eq!(parked["generation"], 1, "{parked}");
    for stale in ["0", "2", "1796127386318", "soon"] {
        let before = request(stale);
        node.wait_status(|s| ignored(s) > before);
    }
    assert_eq!(
        node.control("status")["boots"],
        0,
        "a request for another parking must not boot"
    );
    request("1");
    let running = node.wait_state("running");
    assert_eq!(running["boots"], 1);
    assert_eq!(running["generation"], 1, "a boot does not start a parking");
    node.control("stop");
    let reparked = node.wait_state("parked");
    assert_eq!(reparked["generation"], 2, "{reparked}");
    let before = request("1");
    node.wait_status(|s| ignored(s) > before);
    assert_eq!(node.control("status")["boots"], 1, "generation 1 is over");
    // A lookup asks for the current generation.
    assert_eq!(answers(&node.dig("hello.jitsu.internal", "A", &[])), 1);
    assert_eq!(node.wait_state("running")["boots"], 2);
}

#[test]
fn wait_ready_answers_once_the_service_runs() {
    let node = Node::start(false, &["--wait-ready"]);
    let a = node.dig("hello.jitsu.internal", "A", &[]);
    assert_eq!(answers(&a), 1, "{a}");
    let entry = node.hello().unwrap();
    assert_eq!(
        entry["state"], "running",
        "the answer waited for the boot: {entry}"
    );
    assert_eq!(entry["boots"], 1);
}

/// A XenStore daemon that accepts and never answers cannot keep a monitor
/// from ending: SIGTERM still ends it, with its usual status.
#[test]
fn a_hung_xenstore_cannot_hold_a_monitor_up() {
    let ns = jitsu_e2e::netns::NetNs::with_tap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hung.sock");
    let control = dir.path().join("hello.ctl");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut cmd = ns.command(jitsu_bin());
    cmd.env("XENSTORED_PATH", &socket)
        .args(["run", "--lazy", "--name", "hello", "--control"])
        .arg(&control)
        .args(ns.jitsu_net_args())
        .arg(jitsu_e2e::guest("hello-http"))
        .stdout(Stdio::null());
    let mut monitor = Guarded::spawn(&mut cmd);
    // Held, never read: the monitor's registration waits for an answer.
    let mut held = Vec::new();
    jitsu_e2e::wait_until("the monitor to connect to XenStore", || {
        while let Ok((stream, _)) = listener.accept() {
            held.push(stream);
        }
        !held.is_empty()
    });
    jitsu_e2e::wait_until("the parked monitor", || {
        jitsu_e2e::lazy::try_request(&control, "status").is_ok_and(|s| s.contains("parked"))
    });
    let pid = nix::unistd::Pid::from_raw(monitor.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(
        monitor.wait_timeout(Duration::from_secs(10)).code(),
        Some(143)
    );
    drop(held);
}

/// Through DNS on any timeline: parked for any time, a lookup (the client
/// connects as soon as it has the answer) boots the service once, and the
/// connection needs one SYN.
#[test]
fn a_lookup_boots_once_after_any_parking() {
    const IDLE: Duration = Duration::from_secs(1);
    let node = Node::start_with_monitor(false, &[], &["--idle-timeout", "1s"]);
    let addr = std::net::SocketAddr::from((node.ns.guest_ip, 80));
    for (n, factor) in (1u64..).zip(jitsu_e2e::http::PARKINGS) {
        if n > 1 {
            node.wait_status(|s| s["state"] == "parked" && s["boots"] == n - 1);
        }
        std::thread::sleep(IDLE.mul_f64(factor));
        let short = node.dig("hello.jitsu.internal", "A", &["+short"]);
        assert_eq!(short.trim(), "10.77.0.2", "parked {factor}x");
        let (reply, retrans) = node.ns.run_in(move || jitsu_e2e::http::get(addr));
        assert!(
            reply.starts_with("HTTP/1.1 200"),
            "parked {factor}x: {reply}"
        );
        assert_eq!(retrans, 0, "parked {factor}x: one SYN");
        assert_eq!(
            node.control("status")["boots"],
            n,
            "parked {factor}x: the lookup and the SYN made one boot"
        );
    }
}

/// A hand-made upstream for `far.test` on 127.0.0.2:53 (UDP and TCP) that
/// misbehaves on purpose, by name:
/// - `spoofed.far.test`: first an answer from another port (6.6.6.6), one
///   with the wrong id (6.6.6.7), one for another question (6.6.6.8), and
///   only then the true answer, 10.1.2.3;
/// - `big.far.test`: over UDP only a truncated answer; 10.1.2.4 over TCP;
/// - `slow-*.far.test`: never an answer (the names asked are kept).
struct FakeUpstream {
    asked_slow: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    tcp_used: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// The question's name and where the question section ends.
fn question(q: &[u8]) -> Option<(String, usize)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(at..at + len)?).to_lowercase());
        at += len;
    }
    Some((labels.join("."), at + 4))
}

fn encode_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// An answer to query `q`: its id (or `id`), its question (or for `name`),
/// one A record `ip` unless `truncated`.
fn reply(q: &[u8], id: Option<u16>, name: Option<&str>, ip: [u8; 4], truncated: bool) -> Vec<u8> {
    let (_, end) = question(q).expect("a question");
    let mut r = id.map_or_else(|| q[0..2].to_vec(), |id| id.to_be_bytes().to_vec());
    let flags: u16 = 0x8180 | if truncated { 0x0200 } else { 0 };
    r.extend_from_slice(&flags.to_be_bytes());
    r.extend_from_slice(&[0, 1, 0, if truncated { 0 } else { 1 }, 0, 0, 0, 0]);
    match name {
        Some(name) => {
            r.extend(encode_name(name));
            r.extend_from_slice(&[0, 1, 0, 1]);
        }
        None => r.extend_from_slice(&q[12..end]),
    }
    if !truncated {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        r.extend_from_slice(&ip);
    }
    r
}

impl FakeUpstream {
    fn start(ns: &jitsu_e2e::netns::NetNs) -> FakeUpstream {
        let (udp, decoy, tcp) = ns.run_in(|| {
            (
                UdpSocket::bind("127.0.0.2:53").unwrap(),
                UdpSocket::bind("127.0.0.2:5353").unwrap(),
                std::net::TcpListener::bind("127.0.0.2:53").unwrap(),
            )
        });
        let fake = FakeUpstream {
            asked_slow: Default::default(),
            tcp_used: Default::default(),
        };
        let asked = fake.asked_slow.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                let q = &buf[..n];
                let Some((name, _)) = question(q) else {
                    continue;
                };
                if name == "spoofed.far.test" {
                    let id = u16::from_be_bytes([q[0], q[1]]);
                    let _ = decoy.send_to(&reply(q, None, None, [6, 6, 6, 6], false), from);
                    let _ = udp.send_to(&reply(q, Some(id ^ 1), None, [6, 6, 6, 7], false), from);
                    let other = reply(q, None, Some("other.far.test"), [6, 6, 6, 8], false);
                    let _ = udp.send_to(&other, from);
                    let _ = udp.send_to(&reply(q, None, None, [10, 1, 2, 3], false), from);
                } else if name == "big.far.test" {
                    let _ = udp.send_to(&reply(q, None, None, [0; 4], true), from);
                } else if name.starts_with("slow-") {
                    asked.lock().unwrap().insert(name);
                }
            }
        });
        let tcp_used = fake.tcp_used.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            for mut stream in tcp.incoming().flatten() {
                let mut len = [0u8; 2];
                if stream.read_exact(&mut len).is_err() {
                    continue;
                }
                let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                if stream.read_exact(&mut q).is_err() {
                    continue;
                }
                if question(&q).is_some_and(|(name, _)| name == "big.far.test") {
                    tcp_used.store(true, std::sync::atomic::Ordering::SeqCst);
                    let r = reply(&q, None, None, [10, 1, 2, 4], false);
                    let _ = stream.write_all(&(r.len() as u16).to_be_bytes());
                    let _ = stream.write_all(&r);
                }
            }
        });
        fake
    }
}

/// Forwarded answers are the upstream's own: one from another port, with
/// another id or for another question is ignored, and a truncated one is
/// asked again over TCP.
#[test]
fn forwarded_answers_are_checked_and_truncation_goes_to_tcp() {
    let node = Node::start(false, &["--forward", "127.0.0.2:53"]);
    let upstream = FakeUpstream::start(&node.ns);
    let spoofed = node.dig("spoofed.far.test", "A", &["+time=5"]);
    assert_eq!(
        (status(&spoofed), answers(&spoofed)),
        ("NOERROR", 1),
        "{spoofed}"
    );
    assert!(spoofed.contains("10.1.2.3"), "{spoofed}");
    assert!(!spoofed.contains("6.6.6."), "{spoofed}");
    let big = node.dig("big.far.test", "A", &["+time=5"]);
    assert_eq!((status(&big), answers(&big)), ("NOERROR", 1), "{big}");
    assert!(big.contains("10.1.2.4"), "{big}");
    assert!(upstream.tcp_used.load(std::sync::atomic::Ordering::SeqCst));
}

/// However many names a flood asks about, at most `--forward-limit`
/// forwards are in flight; the rest are answered SERVFAIL at once.
#[test]
fn a_flood_of_forwards_is_bounded() {
    const LIMIT: usize = 8;
    const FLOOD: usize = 200;
    let limit = LIMIT.to_string();
    let node = Node::start(
        false,
        &["--forward", "127.0.0.2:53", "--forward-limit", &limit],
    );
    let upstream = FakeUpstream::start(&node.ns);
    let client = node.ns.run_in(|| UdpSocket::bind("127.0.0.1:0").unwrap());
    for i in 0..FLOOD {
        client
            .send_to(
                &dns_a_query(i as u16, &format!("slow-{i}.far.test")),
                "127.0.0.1:53",
            )
            .unwrap();
    }
    // The upstream never answers: every SERVFAIL that comes back within
    // its timeout is a forward the daemon refused to start.
    client
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut servfail = 0;
    let mut buf = [0u8; 512];
    while servfail < FLOOD - LIMIT {
        let Ok(n) = client.recv(&mut buf) else { break };
        if n >= 4 && buf[3] & 0x0f == 2 {
            servfail += 1;
        }
    }
    assert_eq!(
        servfail,
        FLOOD - LIMIT,
        "the queries beyond the limit fail at once"
    );
    // The forwards in flight reach the upstream a moment later.
    let asked = || upstream.asked_slow.lock().unwrap().len();
    jitsu_e2e::wait_until("a forward at the upstream", || asked() >= 1);
    assert!(asked() <= LIMIT, "{} names reached the upstream", asked());
}

/// With `--allow`, a source outside the ranges gets no answer at all (not
/// even REFUSED); one inside is served.
#[test]
fn only_allowed_sources_are_answered() {
    let node = Node::start(false, &["--allow", "10.99.0.0/16"]);
    let mut add = node.ns.command("ip");
    add.args(["addr", "add", "10.99.0.5/32", "dev", "lo"]);
    assert!(add.status().unwrap().success());
    let outside = node.dig("hello.jitsu.internal", "A", &["+time=1"]);
    assert!(
        outside.contains("timed out") && !outside.contains("status:"),
        "{outside}"
    );
    let inside = node.dig("hello.jitsu.internal", "A", &["-b", "10.99.0.5"]);
    assert_eq!(
        (status(&inside), answers(&inside)),
        ("NOERROR", 1),
        "{inside}"
    );
}

/// `jitsu daemon --metrics`: per service its boots, a boot latency
/// histogram, its state and the frames held for it, in Prometheus' text
/// format, following the registry.
#[test]
fn metrics_follow_the_services() {
    let node = Node::start(false, &["--metrics", "127.0.0.1:9100"]);
    let scrape = |path: &str| {
        let mut cmd = node.ns.command("curl");
        cmd.args(["-s", &format!("http://127.0.0.1:9100{path}")]);
        let out = jitsu_e2e::process::run_with_timeout(&mut cmd, Duration::from_secs(10));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let has = |text: &str, line: &str| text.lines().any(|l| l == line);
    jitsu_e2e::wait_until("the parked service in the metrics", || {
        let m = scrape("/metrics");
        has(&m, r#"jitsu_service_boots_total{service="hello"} 0"#)
            && has(
                &m,
                r#"jitsu_service_state{service="hello",state="parked"} 1"#,
            )
    });
    assert_eq!(node.ns.curl_status("http://10.77.0.2/"), "200");
    let booted = |m: &str| {
        has(m, r#"jitsu_service_boots_total{service="hello"} 1"#)
            && has(
                m,
                r#"jitsu_service_boot_latency_seconds_count{service="hello"} 1"#,
            )
            && has(
                m,
                r#"jitsu_service_state{service="hello",state="running"} 1"#,
            )
            && m.lines().any(|l| {
                l.strip_prefix(r#"jitsu_service_held_frames_total{service="hello"} "#)
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| n >= 1)
            })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = scrape("/metrics");
    while !booted(&last) {
        assert!(Instant::now() < deadline, "the boot never showed:\n{last}");
        std::thread::sleep(Duration::from_millis(20));
        last = scrape("/metrics");
    }
    assert!(scrape("/elsewhere").contains("only GET /metrics"));
}
