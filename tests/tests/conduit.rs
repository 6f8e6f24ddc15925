//! Conduit between unikernels on one KVM node, end to end: jailed monitors,
//! a real XenStore, the counter and probe unikernels.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::time::Duration;

use jitsu_e2e::conduit::{describe, ConduitNode};
use jitsu_e2e::process::Guarded;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_connection_to_a_parked_name_boots_it_and_carries_bytes_both_ways() {
    let node = ConduitNode::start();
    let counter = node.counter("counter", "default", &[]);
    jitsu_e2e::wait_until("the listener's name in XenStore", || {
        node.xenstore_ls("/conduit").contains("counter = \"")
    });
    assert_eq!(counter.status()["boots"], 0, "nothing ran yet");
    let out = node.probe("probe", "default", &["rtt", "conduit", "counter", "50"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout(&out).contains("probe: rtt conduit n=50"),
        "{}",
        describe(&out)
    );
    let status = counter.wait(|s| s["conduit_channels"] == 0);
    assert_eq!(status["boots"], 1, "{status}");
    assert_eq!(status["state"], "running");
    // The request and the channel's metadata are gone with the channel.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while node.xenstore_ls("/conduit").contains("probe") {
        assert!(
            std::time::Instant::now() < deadline,
            "the request and the probe's name stay: {}\nthe probe: {}",
            node.xenstore_ls("/conduit"),
            describe(&out)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The example pair: hello-http's pages show their visit number, which it
/// asks the counter unikernel for over Conduit. Both start parked: a GET
/// boots hello-http, whose question boots the counter.
#[test]
fn hello_http_shows_visits_counted_by_a_parked_counter() {
    let node = ConduitNode::start();
    let counter = node.counter("counter", "default", &[]);
    let hello = node.parked(
        "hello-http",
        "hello",
        "default",
        &[],
        &["hello", "counter=counter"],
    );
    let url = format!("http://{}/", hello.ip);
    let page = |url: &str| {
        let mut cmd = node.ns.command("curl");
        cmd.args(["-sS", "--max-time", "10", url]);
        let out = jitsu_e2e::process::run_with_timeout(&mut cmd, Duration::from_secs(20));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = page(&url);
    assert!(first.contains("Visit number 1,"), "{first}");
    let pages: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..20).map(|_| s.spawn(|| page(&url))).collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut numbers: Vec<u64> = pages
        .iter()
        .map(|p| {
            let at = p.find("Visit number ").expect(p) + "Visit number ".len();
            p[at..].split(',').next().unwrap().parse().expect(p)
        })
        .collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (2..=21).collect::<Vec<_>>(),
        "each visit counted once"
    );
    assert!(page(&url).contains("Visit number 22,"));
    assert_eq!(counter.status()["boots"], 1);
    assert_eq!(hello.status()["boots"], 1);
    assert_eq!(
        counter.status()["conduit_channels"],
        1,
        "one stream, kept open"
    );
}

#[test]
fn many_clients_at_once_boot_the_listener_once() {
    let node = ConduitNode::start();
    let counter = node.counter("counter", "default", &[]);
    let probes: Vec<Guarded> = (0..12)
        .map(|i| {
            let mut cmd = node.probe_command(
                &format!("probe-{i}"),
                "default",
                &["rtt", "conduit", "counter", "20"],
            );
            Guarded::spawn(cmd.stdout(std::process::Stdio::piped()))
        })
        .collect();
    for mut probe in probes {
        let status = probe.wait_timeout(Duration::from_secs(60));
        let mut text = String::new();
        probe
            .child()
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert!(status.success(), "{status:?}: {text}");
        assert!(text.contains("probe: rtt conduit n=20"), "{text}");
    }
    let status = counter.wait(|s| s["conduit_channels"] == 0);
    assert_eq!(status["boots"], 1, "one boot for all of them: {status}");
}

#[test]
fn the_listener_says_who_may_connect_and_why_not() {
    let node = ConduitNode::start();
    let counter = node.counter(
        "counter",
        "team-a",
        &["--conduit-allow", "team-c/*, ops/pager"],
    );
    let ping = ["rtt", "conduit", "counter", "5"];
    let refused = node.probe("probe-b", "team-b", &ping);
    assert_eq!(refused.status.code(), Some(1), "{}", describe(&refused));
    assert!(
        stdout(&refused).contains("refused"),
        "{}",
        describe(&refused)
    );
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        why.contains("probe-b is in group team-b, not the listener's group team-a")
            && why.contains("team-c/*, ops/pager"),
        "the refusal says why: {why}"
    );
    assert_eq!(counter.status()["conduit_refused"], 1);
    for (name, group) in [
        ("probe-a", "team-a"),
        ("probe-c", "team-c"),
        ("pager", "ops"),
    ] {
        let out = node.probe(name, group, &ping);
        assert!(
            out.status.success(),
            "{name} of {group}: {}",
            describe(&out)
        );
    }
    let nobody = node.probe("probe-z", "team-a", &["rtt", "conduit", "nobody", "5"]);
    assert_eq!(nobody.status.code(), Some(1), "{}", describe(&nobody));
    assert!(
        String::from_utf8_lossy(&nobody.stderr).contains("no unikernel listens as nobody"),
        "{}",
        describe(&nobody)
    );
}

/// The counter's monitor: what its descriptors are, and how many channel
/// mappings it has.
fn resources(pid: u32) -> (Vec<String>, usize) {
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            // Sockets and anonymous inodes by kind, not by inode number.
            let target = target.to_string_lossy();
            target.split(':').next().unwrap_or_default().to_string()
        })
        .collect();
    fds.sort();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let channels = maps.lines().filter(|l| l.contains("jitsu-conduit")).count();
    (fds, channels)
}

/// The monitor's resources once they have stopped changing (a channel's
/// connection closes a moment after its count drops).
fn settled(pid: u32) -> (Vec<String>, usize) {
    let mut last = resources(pid);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = resources(pid);
        if now == last {
            return now;
        }
        last = now;
    }
}

#[test]
fn peers_killed_mid_stream_end_the_stream_and_leave_nothing_behind() {
    let node = ConduitNode::start();
    let counter = node.counter("counter", "default", &[]);
    let warm = node.probe("probe", "default", &["rtt", "conduit", "counter", "5"]);
    assert!(warm.status.success(), "{}", describe(&warm));
    counter.wait(|s| s["conduit_channels"] == 0);
    let pid = counter.monitor.pid();
    let before = settled(pid);
    assert_eq!(before.1, 0, "no channel is mapped while none is open");
    for round in 0..100 {
        // A client streaming far more than it will live to send.
        let mut cmd = node.probe_command(
            &format!("streamer-{round}"),
            "default",
            &["bulk", "conduit", "counter", "1000000"],
        );
        let mut client = Guarded::spawn(cmd.stdout(std::process::Stdio::null()));
        counter.wait(|s| s["conduit_channels"] == 1);
        assert_eq!(resources(pid).1, 1, "round {round}: one channel mapped");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(client.pid() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        client.wait_timeout(Duration::from_secs(10));
        counter.wait(|s| s["conduit_channels"] == 0);
    }
    let after = settled(pid);
    assert_eq!(before, after, "the counter's descriptors and mappings");
    let after = node.probe("probe", "default", &["rtt", "conduit", "counter", "5"]);
    assert!(
        after.status.success(),
        "still serving: {}",
        describe(&after)
    );
    assert_eq!(counter.status()["boots"], 1, "it never went down");

    // The other way: the listener's monitor killed mid-stream.
    let mut cmd = node.probe_command(
        "streamer",
        "default",
        &["bulk", "conduit", "counter", "1000000"],
    );
    let mut client = Guarded::spawn(cmd.stdout(std::process::Stdio::piped()));
    let mut text = client.wait_for_output("probe: open", Duration::from_secs(10));
    drop(counter);
    let status = client.wait_timeout(Duration::from_secs(20));
    client
        .child()
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("the counter closed the stream"), "{text}");
}

#[test]
fn an_idle_listener_is_parked_again_and_a_new_connection_boots_it() {
    let node = ConduitNode::start();
    let counter = node.counter("counter", "default", &["--idle-timeout", "300ms"]);
    let ping = ["rtt", "conduit", "counter", "5"];
    let first = node.probe("probe", "default", &ping);
    assert!(first.status.success(), "{}", describe(&first));
    counter.wait(|s| s["state"] == "parked" && s["generation"] == 2);
    let again = node.probe("probe", "default", &ping);
    assert!(again.status.success(), "{}", describe(&again));
    assert_eq!(counter.status()["boots"], 2);
}

/// The rendezvous as XenStore shows it while a channel is open: the
/// listener's name, the client's request, and the channel's metadata in
/// the listener's domain, readable by the client.
#[test]
fn xenstore_shows_the_rendezvous_of_an_open_channel() {
    let node = ConduitNode::start();
    let counter = node.counter("counter", "default", &[]);
    let server = jitsu_registry::identity::domid_of_uid(counter.uid).unwrap();
    let mut cmd = node.probe_command(
        "streamer",
        "default",
        &["bulk", "conduit", "counter", "1000000"],
    );
    let _client = Guarded::spawn(cmd.stdout(std::process::Stdio::null()));
    counter.wait(|s| s["conduit_channels"] == 1);
    jitsu_e2e::wait_until("the client's request in XenStore", || {
        node.xenstore_ls("/conduit").contains("streamer")
    });
    let conduit = node.xenstore_ls("/conduit");
    assert!(
        conduit.contains(&format!("counter = \"{server}\"")),
        "{conduit}"
    );
    assert!(conduit.contains("streamer = \"\""), "{conduit}");
    let metadata = node.xenstore_ls(&format!("/local/domain/{server}/data/vchan"));
    for key in [
        "transport = \"kvm-memfd\"",
        "left-order = \"18\"",
        "right-order = \"12\"",
    ] {
        assert!(metadata.contains(key), "{key}: {metadata}");
    }
}

/// What a hostile or broken peer monitor can do on the wire: every bad
/// packet is dropped or refused, the listener stays up and serves.
#[test]
fn garbage_on_a_listeners_socket_harms_nobody() {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let node = ConduitNode::start();
    let counter = node.counter("counter", "default", &[]);
    let path = node.socket_dir().join("counter");
    let mut junk = jitsu_e2e::Junk::new(7);
    let packets: Vec<Vec<u8>> = vec![
        b"connect counter probe 16 16".to_vec(),
        b"connect nobody-here probe 16 16".to_vec(),
        b"connect probe probe 99 16".to_vec(),
        b"accept 16 16".to_vec(),
        vec![0xff; 300],
        junk.bytes(200),
        Vec::new(),
    ];
    for packet in packets {
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        connect(fd.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        let mut stream = std::fs::File::from(fd);
        let _ = stream.write_all(&packet);
        // An answer (a refusal) or the end; never a channel for a stranger.
        let mut answer = [0u8; 512];
        let n = stream.read(&mut answer).unwrap_or(0);
        let text = String::from_utf8_lossy(&answer[..n]);
        assert!(n == 0 || text.starts_with("refuse "), "{text}");
    }
    assert!(counter.monitor.child_alive());
    let out = node.probe("probe", "default", &["rtt", "conduit", "counter", "5"]);
    assert!(out.status.success(), "{}", describe(&out));
}
