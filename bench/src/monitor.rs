//! The monitor and the hello unikernel: exec cost, boot, hypercalls, memory.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jitsu_e2e::netns::NetNs;
use jitsu_e2e::{guest, jitsu_bin, monitor_bin};

use crate::stats::{Row, Samples, Unit};

pub fn rows(quick: bool) -> Result<Vec<Row>> {
    let n = if quick { 20 } else { 200 };
    let mut rows = exec_rows(n)?;
    rows.push(hypercall_row(if quick { 1_000 } else { 20_000 })?);
    rows.extend(hello_http_rows(if quick { 10 } else { 60 })?);
    Ok(rows)
}

fn monotonic_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Exec of a halting guest against exec of /bin/true, interleaved; and exec
/// to the guest's first instruction, from `--timings`.
pub(crate) fn exec_rows(n: usize) -> Result<Vec<Row>> {
    let (mut truth, mut halt, mut first) = (Samples::new(), Samples::new(), Samples::new());
    let abi_test = guest("abi-test");
    for _ in 0..n {
        let t = Instant::now();
        let status = Command::new("/bin/true").status()?;
        truth.push(t.elapsed());
        anyhow::ensure!(status.success());

        let spawned = monotonic_nanos();
        let t = Instant::now();
        let out = Command::new(monitor_bin())
            .arg("--timings")
            .arg(&abi_test)
            .args(["--", "exit", "0"])
            .stderr(Stdio::piped())
            .output()?;
        halt.push(t.elapsed());
        anyhow::ensure!(
            out.status.success(),
            "jitsu-monitor failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        let field = |key: &str| -> Option<u64> {
            err.split(key)
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        if let (Some(start), Some(first_us)) =
            (field("start_monotonic_ns="), field("first_instruction="))
        {
            first.push_value((start.saturating_sub(spawned) + first_us * 1000) as f64 / 1e9);
        }
    }
    let baseline = || "exec /bin/true".to_string();
    Ok(vec![
        Row {
            name: "exec `jitsu-monitor` of a guest that halts at once".into(),
            samples: halt,
            baseline_name: baseline(),
            baseline: truth.clone(),
            unit: Unit::Time,
        },
        Row {
            name: "exec to first guest instruction".into(),
            samples: first,
            baseline_name: baseline(),
            baseline: truth,
            unit: Unit::Time,
        },
    ])
}

/// One WALLTIME round trip timed inside the guest, against a host syscall.
fn hypercall_row(calls: usize) -> Result<Row> {
    let out = Command::new(jitsu_bin())
        .arg("run")
        .arg(guest("abi-test"))
        .args(["--", "hypercalls", &calls.to_string()])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| -> Result<f64> {
        let v: f64 = text
            .split(key)
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{key} in {text:?}"))?;
        Ok(v / 1e9)
    };
    // The guest times each call with rdtsc and reports median and p99.
    let guest_side = Samples::Summary {
        n: calls,
        median: field("median_ns=")?,
        p99: field("p99_ns=")?,
    };
    let mut syscall = Samples::new();
    for _ in 0..calls {
        let t = Instant::now();
        // SAFETY: getppid has no arguments and cannot fail.
        unsafe { libc::syscall(libc::SYS_getppid) };
        syscall.push(t.elapsed());
    }
    Ok(Row {
        name: "hypercall round trip (timed in the guest)".into(),
        samples: guest_side,
        baseline_name: "host syscall (getppid)".into(),
        baseline: syscall,
        unit: Unit::Time,
    })
}

struct Hello {
    child: Child,
}

impl Hello {
    /// Starts hello-http and returns once it says it is listening.
    fn start(ns: &NetNs) -> Result<Hello> {
        let mut child = Command::new(jitsu_bin())
            .arg("run")
            .args(ns.jitsu_net_args())
            .arg(guest("hello-http"))
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().context("stdout")?).read_line(&mut line)?;
        if !line.contains("listening") {
            bail!("hello-http said {line:?}");
        }
        Ok(Hello { child })
    }
}

impl Drop for Hello {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn get(addr: SocketAddr) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)?;
    if !reply.starts_with(b"HTTP/1.1 200") {
        bail!("unexpected reply {:?}", String::from_utf8_lossy(&reply));
    }
    Ok(())
}

/// Exec to first HTTP 200 against a request to an already running guest.
fn hello_http_rows(n: usize) -> Result<Vec<Row>> {
    let ns = NetNs::with_tap();
    let addr = SocketAddr::from((ns.guest_ip, 80));
    ns.run_in(|| -> Result<Vec<Row>> {
        let mut cold = Samples::new();
        for _ in 0..n {
            let t = Instant::now();
            let hello = Hello::start(&ns)?;
            get(addr)?;
            cold.push(t.elapsed());
            drop(hello);
        }
        let _running = Hello::start(&ns)?;
        let mut warm = Samples::new();
        for _ in 0..n.max(100) {
            let t = Instant::now();
            get(addr)?;
            warm.push(t.elapsed());
        }
        Ok(vec![Row {
            name: "exec `jitsu run hello-http` to first HTTP 200".into(),
            samples: cold,
            baseline_name: "GET from a running hello-http".into(),
            baseline: warm,
            unit: Unit::Time,
        }])
    })
}
