//! Parked Xen domains (`jitsu run --hypervisor xen --lazy`): the KVM lazy
//! tests' cases, on Xen. Each parks hello-http on a bridge of its own and
//! reaches it from dom0, as a client on the node would.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use jitsu_e2e::http::{get, PARKINGS};
use jitsu_e2e::lazy::try_request;
use libtest_mimic::Failed;

use crate::{guest, jitsu, leaves_nothing, test_name, text, Bridge, Monitor, Result, TIMEOUT};

const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 92, 0, 2);

/// A parked hello-http domain and its control socket.
struct LazyDomain {
    monitor: Monitor,
    control: PathBuf,
    domain: String,
    _bridge: Bridge,
    _dir: tempfile::TempDir,
}

impl LazyDomain {
    /// Parks hello-http (`extra` goes to `jitsu run`) and waits for `parked`.
    fn start(tag: &str, extra: &[&str]) -> std::result::Result<LazyDomain, Failed> {
        let bridge = Bridge::new(tag);
        let dir = tempfile::tempdir()?;
        let control = dir.path().join("control.sock");
        let domain = test_name(tag);
        let mut cmd = jitsu(&["--lazy", "--net", &bridge.0, "--domain-name", &domain]);
        cmd.arg("--control")
            .arg(&control)
            .args(["--ip", "10.92.0.2/24", "--gw", "10.92.0.1"])
            .args(extra)
            .arg(guest("hello-http"))
            .args(["--", tag]);
        cmd.env("JITSU_LOG", "jitsu_xen=debug,jitsu_runtime=debug");
        let server = LazyDomain {
            monitor: Monitor::spawn(cmd)?,
            control,
            domain,
            _bridge: bridge,
            _dir: dir,
        };
        server.wait_until(|s| s["state"] == "parked", TIMEOUT)?;
        Ok(server)
    }

    fn status(&self) -> std::result::Result<serde_json::Value, Failed> {
        let reply = try_request(&self.control, "status")?;
        Ok(serde_json::from_str(&reply)?)
    }

    /// Polls the status until `pred` holds.
    fn wait_until(
        &self,
        pred: impl Fn(&serde_json::Value) -> bool,
        timeout: Duration,
    ) -> std::result::Result<serde_json::Value, Failed> {
        crate::wait_for_status(&self.control, pred, timeout)
    }

    /// The domain's id and `xl list` state flags (`p` while paused).
    fn xl_state(&self) -> Option<(u32, String)> {
        let out = Command::new("xl").arg("list").output().ok()?;
        text(&out.stdout).lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&self.domain.as_str()) && f.len() >= 5)
                .then(|| Some((f[1].parse().ok()?, f[4].to_string())))
                .flatten()
        })
    }

    /// SIGTERM, and the monitor's status must be 143.
    fn stop(mut self) -> Result {
        self.monitor.terminate();
        let status = self.monitor.wait(TIMEOUT)?;
        if status.code() != Some(143) {
            let (_, log) = self.monitor.take_output();
            return Err(
                format!("SIGTERM ended the monitor with {status:?}\n{}", text(&log)).into(),
            );
        }
        Ok(())
    }

    /// Fails with `why`, the status and the monitor's log.
    fn fail(mut self, why: String) -> Result {
        let status = self.status().unwrap_or_default();
        self.monitor.terminate();
        let _ = self.monitor.wait(TIMEOUT);
        let (out, log) = self.monitor.take_output();
        Err(format!(
            "{why}\nstatus: {status}\nstdout: {}\nlog: {}",
            text(&out),
            text(&log)
        )
        .into())
    }
}

fn addr() -> SocketAddr {
    SocketAddr::from((GUEST_IP, 80))
}

pub fn a_parked_domain_answers_its_first_syn_without_a_retransmission() -> Result {
    leaves_nothing(|| {
        // At its entry: nothing of the guest runs before the trigger.
        let mut server = LazyDomain::start("syn", &["--park-at", "entry"])?;
        let parked = server.status()?;
        let state = server.xl_state();
        if parked["boots"] != 0 || !state.as_ref().is_some_and(|(_, s)| s.contains('p')) {
            return server.fail(format!("not parked paused: xl {state:?}"));
        }
        // Nothing of the guest has run: it prints its banner at start.
        if let Ok(line) = server.monitor.lines.try_recv() {
            return server.fail(format!("the parked guest printed {line:?}"));
        }
        let (reply, retrans) = get(addr());
        let status = server.status()?;
        if !reply.starts_with("HTTP/1.1 200") || !reply.contains("Hello from syn") {
            return server.fail(format!("GET / gave {reply:?}"));
        }
        if retrans != 0 {
            return server.fail(format!("the client retransmitted {retrans} segments"));
        }
        let counted = status["state"] == "running"
            && status["boots"] == 1
            && status["held_frames"].as_u64() >= Some(1)
            && status["arp_replies"].as_u64() >= Some(1)
            && status["last_boot_latency_us"].as_u64().is_some();
        if !counted {
            return server.fail("the status does not show one boot, a held SYN and ARP".into());
        }
        server.monitor.wait_for_line("listening on 10.92.0.2:80")?;
        server.stop()
    })
}

/// Parked for any time (never booted, or re-parked by idleness and left
/// for less than, as long as, or many times the idle timeout), the domain
/// answers its first SYN and boots once; each parking is a fresh domain.
pub fn a_domain_parked_for_any_time_answers_its_first_syn_and_boots_once() -> Result {
    const IDLE: Duration = Duration::from_secs(2);
    leaves_nothing(|| {
        let server = LazyDomain::start("idle", &["--idle-timeout", "2s"])?;
        let mut domids = Vec::new();
        for (n, factor) in (1u64..).zip(PARKINGS) {
            if n > 1 {
                server.wait_until(|s| s["state"] == "parked" && s["boots"] == n - 1, TIMEOUT)?;
            }
            domids.extend(server.xl_state().map(|(id, _)| id));
            // The parking itself is the condition under test: time must pass.
            std::thread::sleep(IDLE.mul_f64(factor));
            let (reply, retrans) = get(addr());
            let boots = server.status()?["boots"].clone();
            if !reply.starts_with("HTTP/1.1 200") || retrans != 0 || boots != n {
                return server.fail(format!(
                    "parked {factor}x the idle timeout: {retrans} retransmissions, boots {boots}, reply {reply:?}"
                ));
            }
            if crate::our_domains().len() != 1 {
                return server.fail(format!("domains: {:?}", crate::our_domains()));
            }
        }
        domids.dedup();
        if domids.len() != PARKINGS.len() {
            return server.fail(format!("each parking a fresh domain, got ids {domids:?}"));
        }
        server.stop()
    })
}

/// Many clients at once at a parked domain: one boot, every one answered.
pub fn a_crowd_at_a_parked_domain_boots_it_once() -> Result {
    leaves_nothing(|| {
        let server = LazyDomain::start("crowd", &[])?;
        let urls: Vec<String> = (0..48)
            .map(|i| format!("http://{GUEST_IP}/?c={i}"))
            .collect();
        let out = Command::new("curl")
            .args(["-s", "-m", "60", "--parallel", "--parallel-immediate"])
            .args([
                "--parallel-max",
                "48",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}\n",
            ])
            .args(&urls)
            .output()?;
        let codes = text(&out.stdout);
        let ok = codes.lines().filter(|c| *c == "200").count();
        let status = server.status()?;
        if ok != urls.len() || status["boots"] != 1 {
            return server.fail(format!("{ok} of {} got 200: {codes:?}", urls.len()));
        }
        server.stop()
    })
}

/// A connection kept open across a re-parking is reset at the client's
/// next segment, at once, and the client's new connection boots the service.
pub fn a_kept_alive_connection_to_a_reparked_domain_is_reset_at_once() -> Result {
    leaves_nothing(|| {
        let server = LazyDomain::start("keep", &["--idle-timeout", "2s"])?;
        let request = b"GET / HTTP/1.1\r\nHost: jitsu\r\n\r\n";
        let mut stream = TcpStream::connect_timeout(&addr(), TIMEOUT)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(request)?;
        let mut first = [0u8; 512];
        let n = stream.read(&mut first)?;
        if !first[..n].starts_with(b"HTTP/1.1 200") {
            return server.fail(format!("first reply {:?}", text(&first[..n])));
        }
        server.wait_until(|s| s["state"] == "parked" && s["boots"] == 1, TIMEOUT)?;
        let asked = Instant::now();
        let _ = stream.write_all(request);
        let mut rest = Vec::new();
        let ended = stream.read_to_end(&mut rest);
        let reset = matches!(&ended, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset);
        if !reset || asked.elapsed() > Duration::from_secs(5) {
            return server.fail(format!(
                "the old connection ended with {ended:?} after {:?}",
                asked.elapsed()
            ));
        }
        let (reply, retrans) = get(addr());
        if !reply.starts_with("HTTP/1.1 200") || retrans != 0 || server.status()?["boots"] != 2 {
            return server.fail(format!(
                "the new connection: {retrans} retransmissions, {reply:?}"
            ));
        }
        server.stop()
    })
}

/// Parked at its ready point (run until netfront connected, then paused),
/// the domain has printed its banner already, and answers the first SYN.
pub fn a_domain_parked_at_its_ready_point_answers_its_first_syn() -> Result {
    leaves_nothing(|| {
        let mut server = LazyDomain::start("ready", &["--park-at", "ready"])?;
        server.monitor.wait_for_line("listening on 10.92.0.2:80")?;
        let state = server.xl_state();
        if !state.as_ref().is_some_and(|(_, s)| s.contains('p')) {
            return server.fail(format!("not paused: xl {state:?}"));
        }
        let (reply, retrans) = get(addr());
        let status = server.status()?;
        if !reply.starts_with("HTTP/1.1 200") || retrans != 0 || status["boots"] != 1 {
            return server.fail(format!("{retrans} retransmissions, reply {reply:?}"));
        }
        server.stop()
    })
}

/// `jitsu daemon` on Xen's own xenstored, and a lazy domain registered
/// there: a crowd of lookups of its name boots it once, the registry shows
/// it with Xen's tools, and the entry goes with the monitor.
pub fn lookups_of_a_parked_domains_name_boot_it_once() -> Result {
    leaves_nothing(|| {
        let name = format!("lz{}", std::process::id());
        let mut daemon = Command::new(crate::env_path("JITSU_BIN"));
        daemon
            .args(["daemon", "--xenstore-socket", "/run/xenstored/socket"])
            .args(["--dns-listen", "127.0.0.1:5356", "--allow", "127.0.0.0/8"])
            .args(["--metrics", "127.0.0.1:9356"]);
        let mut daemon = Monitor::spawn(daemon)?;
        let server = LazyDomain::start("dns", &["--name", &name])?;
        let query = jitsu_e2e::packet::dns_a_query(9, &format!("{name}.jitsu.internal"));
        // One lookup: the A record, or None (no answer in time, or NXDOMAIN
        // from a daemon that has not read the entry yet).
        let ask = || -> Option<Vec<u8>> {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
            socket.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            socket.send_to(&query, "127.0.0.1:5356").ok()?;
            let mut reply = [0u8; 512];
            let n = socket.recv(&mut reply).ok()?;
            let a = &reply[..n];
            (a.len() > 12 && a[3] & 0xf == 0 && a.ends_with(&GUEST_IP.octets())).then(|| a.to_vec())
        };
        // 32 clients at once, each asking until it has the record.
        let answered = std::thread::scope(|s| {
            let clients: Vec<_> = (0..32)
                .map(|_| {
                    s.spawn(|| {
                        let deadline = Instant::now() + TIMEOUT;
                        while Instant::now() < deadline {
                            if ask().is_some() {
                                return true;
                            }
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        false
                    })
                })
                .collect();
            clients
                .into_iter()
                .map(|c| c.join())
                .filter(|joined| matches!(joined, Ok(true)))
                .count()
        });
        let status = server.wait_until(|s| s["state"] == "running", TIMEOUT);
        let listing = crate::xenstore(&["xenstore-ls", "-fp", "/jitsu/services"])?;
        if answered != 32 || status.is_err() {
            daemon.terminate();
            let _ = daemon.wait(TIMEOUT);
            let (_, log) = daemon.take_output();
            return server.fail(format!(
                "{answered} of 32 clients got the record; {status:?}\ndaemon: {}",
                text(&log)
            ));
        }
        let (reply, retrans) = get(addr());
        let boots = server.status()?["boots"].clone();
        if !reply.starts_with("HTTP/1.1 200") || retrans != 0 || boots != 1 {
            return server.fail(format!(
                "after the lookups: boots {boots}, {retrans} retransmissions, {reply:?}"
            ));
        }
        let entry = format!("/jitsu/services/{name}/state = \"running\"");
        if !listing.contains(&entry) {
            return server.fail(format!("xenstore-ls lacks {entry:?}: {listing}"));
        }
        if let Err(e) = runs_on_xen_as_shown(&name, server.xl_state().map(|(id, _)| id)) {
            return server.fail(e.message().unwrap_or_default().to_string());
        }
        server.stop()?;
        let after = crate::xenstore(&["xenstore-ls", "-f", "/jitsu/services"]).unwrap_or_default();
        if after.contains(&format!("/jitsu/services/{name}/")) {
            return Err(format!("the entry outlived the monitor: {after}").into());
        }
        Ok(())
    })
}

/// `jitsu ps` and the daemon's metrics name the hypervisor and the domain.
fn runs_on_xen_as_shown(name: &str, domid: Option<u32>) -> Result {
    let domid = domid.ok_or("the domain is not in xl list")?;
    let ps = Command::new(crate::env_path("JITSU_BIN"))
        .args(["ps", "--json", "--xenstore-socket", "/run/xenstored/socket"])
        .output()?;
    let rows: serde_json::Value = serde_json::from_slice(&ps.stdout)?;
    let row = rows
        .as_array()
        .and_then(|r| r.iter().find(|s| s["name"] == name))
        .ok_or_else(|| format!("jitsu ps lacks {name}: {}", text(&ps.stdout)))?;
    if row["hypervisor"] != "xen" || row["domid"] != domid {
        return Err(format!("jitsu ps says {row}, xl says domain {domid}").into());
    }
    let table = Command::new(crate::env_path("JITSU_BIN"))
        .args(["ps", "--xenstore-socket", "/run/xenstored/socket"])
        .output()?;
    if !text(&table.stdout).contains(&format!("xen:{domid}")) {
        return Err(format!("jitsu ps's table: {}", text(&table.stdout)).into());
    }
    // The daemon's directory follows the registry a moment behind.
    let want =
        format!("jitsu_service_info{{service=\"{name}\",hypervisor=\"xen\",domid=\"{domid}\"}} 1");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let metrics = Command::new("curl")
            .args(["-s", "-m", "10", "http://127.0.0.1:9356/metrics"])
            .output()?;
        if text(&metrics.stdout).contains(&want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the metrics lack {want}: {}", text(&metrics.stdout)).into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
