//! Conduit between Xen domains, with grants and event channels: a parked
//! domain booted by a request filed for its name, and each direction
//! against Xen's own libxenvchan in dom0 (`vchan-socket-proxy` from
//! xen-utils): our listener serves its client, our client reaches its
//! server.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jitsu_e2e::lazy::try_request;
use libtest_mimic::Failed;

use crate::{expect_contains, expect_status, guest, jitsu, leaves_nothing, run, test_name, text};
use crate::{Bridge, Monitor, Result, TIMEOUT};

const PROXY: &str = "/usr/lib/xen-4.17/bin/vchan-socket-proxy";

/// A parked counter domain named `name` for Conduit (lazy needs a vif).
struct Counter {
    monitor: Monitor,
    control: PathBuf,
    _bridge: Bridge,
    _dir: tempfile::TempDir,
}

impl Counter {
    fn park(tag: &str, name: &str) -> std::result::Result<Counter, Failed> {
        let bridge = Bridge::new(tag);
        let dir = tempfile::tempdir()?;
        let control = dir.path().join("control.sock");
        let mut cmd = jitsu(&[
            "--lazy",
            "--net",
            &bridge.0,
            "--domain-name",
            &test_name(tag),
        ]);
        cmd.arg("--control")
            .arg(&control)
            .args([
                "--ip",
                "10.95.0.2/24",
                "--gw",
                "10.95.0.1",
                "--conduit",
                name,
            ])
            .arg(guest("counter"));
        cmd.env("JITSU_LOG", "jitsu_conduit=debug,jitsu_runtime=debug");
        let counter = Counter {
            monitor: Monitor::spawn(cmd)?,
            control,
            _bridge: bridge,
            _dir: dir,
        };
        counter.wait_until(|s| s["state"] == "parked")?;
        Ok(counter)
    }

    fn status(&self) -> std::result::Result<serde_json::Value, Failed> {
        Ok(serde_json::from_str(&try_request(
            &self.control,
            "status",
        )?)?)
    }

    fn wait_until(
        &self,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> std::result::Result<serde_json::Value, Failed> {
        crate::wait_for_status(&self.control, pred, TIMEOUT)
    }

    /// Stops it, and says what it logged if `result` failed.
    fn finish(mut self, result: Result) -> Result {
        self.monitor.terminate();
        let _ = self.monitor.wait(TIMEOUT);
        let (out, log) = self.monitor.take_output();
        result.map_err(|e| {
            let why = e.message().unwrap_or("failed").to_string();
            format!(
                "{why}\ncounter's stdout: {}\ncounter's log: {}",
                text(&out),
                text(&log)
            )
            .into()
        })
    }
}

fn xs_read(path: &str) -> Option<String> {
    let out = Command::new("xenstore-read").arg(path).output().ok()?;
    out.status
        .success()
        .then(|| text(&out.stdout).trim().to_string())
}

fn xs(args: &[&str]) -> Result {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if !out.status.success() {
        return Err(format!("{args:?}: {}", text(&out.stderr)).into());
    }
    Ok(())
}

/// Waits until `path` can be read in XenStore.
fn wait_for_key(path: &str) -> std::result::Result<String, Failed> {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if let Some(value) = xs_read(path) {
            return Ok(value);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{path} never appeared in XenStore").into())
}

/// Two domains over Conduit: the probe's request boots the parked counter,
/// once, and their round trips cross granted pages.
pub fn conduit_between_domains_boots_a_parked_one_once() -> Result {
    leaves_nothing(|| {
        let counter = Counter::park("cc", "counter")?;
        let result = (|| {
            let registered = wait_for_key("/conduit/counter")?;
            let domid = counter.status()?["domid"].as_u64().unwrap_or(0);
            if registered != domid.to_string() {
                return Err(
                    format!("/conduit/counter is {registered:?}, the domain is {domid}").into(),
                );
            }
            let mut cmd = jitsu(&["--domain-name", &test_name("probe"), "--conduit", "probe"]);
            cmd.arg(guest("probe"))
                .args(["--", "rtt", "conduit", "counter", "20"]);
            let out = run(cmd)?;
            expect_status(&out, 0)?;
            expect_contains("the probe's stdout", &out.stdout, "probe: rtt conduit n=20")?;
            let status = counter.status()?;
            if status["boots"] != 1 {
                return Err(format!("the counter booted {} times, want 1", status["boots"]).into());
            }
            Ok(())
        })();
        counter.finish(result)
    })
}

/// Xen's libxenvchan (dom0's vchan-socket-proxy, as a client) reads our
/// listener's channel: a request filed with Xen's tools boots the counter,
/// which publishes the channel; the proxy maps it and carries lines.
pub fn conduit_listener_serves_xens_own_libxenvchan_client() -> Result {
    leaves_nothing(|| {
        let counter = Counter::park("cv", "vcounter")?;
        let result = (|| {
            wait_for_key("/conduit/vcounter")?;
            xs(&["xenstore-write", "/conduit/vcounter/dom0/lines", "0"])?;
            let status = counter.wait_until(|s| s["state"] == "running")?;
            let domid = status["domid"].as_u64().ok_or("no domid")?;
            let channel = format!("/local/domain/{domid}/data/vchan/0/lines");
            wait_for_key(&format!("{channel}/event-channel"))?;
            let mut proxy = Command::new(PROXY)
                .args(["-m", "client", &domid.to_string(), &channel, "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            let mut input = proxy.stdin.take().ok_or("stdin")?;
            let mut output = BufReader::new(proxy.stdout.take().ok_or("stdout")?);
            let mut line = String::new();
            for (ask, want) in [("ping", "pong"), ("incr", "1"), ("incr", "2"), ("get", "2")] {
                writeln!(input, "{ask}")?;
                input.flush()?;
                line.clear();
                output.read_line(&mut line)?;
                if line.trim() != want {
                    let _ = proxy.kill();
                    let err = proxy
                        .wait_with_output()
                        .map(|o| text(&o.stderr))
                        .unwrap_or_default();
                    return Err(format!(
                        "asked {ask:?}, got {line:?} (want {want:?}); proxy: {err}"
                    )
                    .into());
                }
            }
            drop(input);
            let _ = proxy.wait();
            Ok(())
        })();
        counter.finish(result)
    })
}

/// Our client reaches Xen's libxenvchan as a server (dom0's
/// vchan-socket-proxy, passing lines to a unix socket this test answers):
/// the probe finds the name `host` registered by dom0, files its request,
/// and maps dom0's granted pages once the proxy publishes them.
pub fn conduit_client_reaches_xens_own_libxenvchan_server() -> Result {
    leaves_nothing(|| {
        xs(&["xenstore-write", "/conduit/host", "0"])?;
        xs(&["xenstore-chmod", "/conduit/host", "b0"])?;
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("pong.sock");
        let listener = UnixListener::bind(&socket)?;
        // Answers every line with "pong", for as many connections as come.
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(|c| c.ok()) {
                let mut writer = conn.try_clone().expect("clone");
                for line in BufReader::new(conn).lines().map_while(|l| l.ok()) {
                    let answer = if line == "ping" { "pong\n" } else { "error\n" };
                    if writer.write_all(answer.as_bytes()).is_err() {
                        break;
                    }
                }
            }
        });
        let mut cmd = jitsu(&["--domain-name", &test_name("vprobe"), "--conduit", "vprobe"]);
        cmd.arg(guest("probe"))
            .args(["--", "rtt", "conduit", "host", "10"]);
        let mut probe = Monitor::spawn(cmd)?;
        let result = (|| {
            let client = wait_for_key("/conduit/host/vprobe/probe")?;
            let channel = format!("/local/domain/0/data/vchan/{client}/probe");
            let mut proxy = Command::new(PROXY)
                .args(["-v", "-m", "server", &client, &channel])
                .arg(&socket)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?;
            let status = probe.wait(TIMEOUT);
            let (out, log) = probe.take_output();
            let _ = proxy.kill();
            let proxy_log = proxy
                .wait_with_output()
                .map(|o| text(&o.stderr))
                .unwrap_or_default();
            let ended = status.as_ref().ok().and_then(|s| s.code());
            if ended != Some(0) || !text(&out).contains("probe: rtt conduit n=10") {
                let listing = Command::new("xenstore-ls")
                    .args(["-fp", "/local/domain/0/data/vchan"])
                    .output()
                    .map(|o| text(&o.stdout))
                    .unwrap_or_default();
                return Err(format!(
                    "the probe ended with {status:?}\nstdout: {}\nlog: {}\nproxy: {proxy_log}\nstore: {listing}",
                    text(&out),
                    text(&log)
                )
                .into());
            }
            Ok(())
        })();
        let _ = xs(&["xenstore-rm", "/conduit/host"]);
        result
    })
}
