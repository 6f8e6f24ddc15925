//! Through containerd: `ctr run` to the first HTTP byte of the unikernel
//! (lazy: its first SYN boots it) against runc running a static native HTTP
//! server doing the same job; and a parked task's cold request.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use jitsu_e2e::containerd::Containerd;
use jitsu_e2e::lazy::try_request;
use jitsu_spec::archive::{image_archive, File};

use crate::stats::{Row, Samples, Unit};

/// The static native server as an OCI image archive, `NATIVE_IMAGE`.
pub(crate) fn native_image() -> Result<Vec<u8>> {
    let native = std::fs::read(jitsu_e2e::cri::native_binary("native-http"))?;
    let files = [File {
        path: "native-http",
        mode: 0o755,
        data: &native,
    }];
    image_archive(&files, Default::default(), "/native-http", NATIVE_IMAGE)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

pub(crate) const NATIVE_IMAGE: &str = "docker.io/jitsu/native:latest";

/// Connects (retrying while nothing listens yet), GETs, waits for a byte.
pub(crate) fn first_byte(addr: SocketAddr, deadline: Instant) -> Result<()> {
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
                let mut byte = [0u8; 1];
                ensure!(s.read(&mut byte)? == 1, "no answer from {addr}");
                return Ok(());
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_micros(200)),
            Err(e) => return Err(e).context(format!("connecting to {addr}")),
        }
    }
}

/// `ctr run -d ARGS ID` then the first byte, `n` times; each removed after.
fn ctr_run_to_first_byte(
    c: &Containerd,
    run_args: &[&str],
    addr: SocketAddr,
    n: usize,
) -> Result<Samples> {
    let mut samples = Samples::new();
    for i in 0..n {
        let id = format!("b{i}");
        let t = Instant::now();
        let mut args = vec!["run", "-d"];
        args.extend_from_slice(run_args);
        args.push(&id);
        c.ctr_ok(&args);
        c.ns.run_in(|| first_byte(addr, Instant::now() + Duration::from_secs(10)))?;
        samples.push(t.elapsed());
        let _ = c.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while c.task_status(&id).as_deref() == Some("RUNNING") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = c.ctr(&["task", "delete", &id]);
        c.ctr_ok(&["container", "delete", &id]);
    }
    Ok(samples)
}

pub fn rows(quick: bool) -> Result<Vec<Row>> {
    let n = if quick { 5 } else { 25 };
    let c = Containerd::start();
    c.import_hello("jitsu/hello:latest", &[]);
    let archive_path = c.dir.path().join("native.tar");
    std::fs::write(&archive_path, native_image()?)?;
    c.ctr_ok(&["images", "import", archive_path.to_str().context("path")?]);

    let unikernel_addr = SocketAddr::from(([10, 77, 0, 2], 80));
    let native_addr = SocketAddr::from(([127, 0, 0, 1], 8080));
    let jitsu = ctr_run_to_first_byte(
        &c,
        &[
            "--runtime",
            "io.containerd.jitsu.v1",
            "docker.io/jitsu/hello:latest",
        ],
        unikernel_addr,
        n,
    )?;
    let runc = ctr_run_to_first_byte(&c, &["--net-host", NATIVE_IMAGE], native_addr, n)?;

    let cold = cold_connects(&c, unikernel_addr, n * 4)?;

    // The same with monitors unjailed (seccomp stays on): the jail's cost.
    drop(c);
    let unjailed = Containerd::start_with_pre_exec(|cmd| {
        cmd.env("JITSU_BENCH_UNJAILED", "1");
    });
    unjailed.import_hello("jitsu/hello:latest", &[]);
    let jitsu_unjailed = ctr_run_to_first_byte(
        &unjailed,
        &[
            "--runtime",
            "io.containerd.jitsu.v1",
            "docker.io/jitsu/hello:latest",
        ],
        unikernel_addr,
        n,
    )?;
    let cold_unjailed = cold_connects(&unjailed, unikernel_addr, n * 4)?;
    let jail_rows = [
        Row {
            name: "ctr run to first byte, jailed monitor".into(),
            samples: jitsu.clone(),
            baseline_name: "the same, monitor not jailed".into(),
            baseline: jitsu_unjailed,
            unit: Unit::Time,
        },
        Row {
            name: "parked task cold connect, jailed monitor".into(),
            samples: cold.clone(),
            baseline_name: "the same, monitor not jailed".into(),
            baseline: cold_unjailed,
            unit: Unit::Time,
        },
    ];
    Ok(vec![
        Row {
            name: "ctr run to first HTTP byte: unikernel (lazy)".into(),
            samples: jitsu,
            baseline_name: "ctr run, runc, static native server".into(),
            baseline: runc.clone(),
            unit: Unit::Time,
        },
        Row {
            name: "parked unikernel task: cold connect to first byte".into(),
            samples: cold,
            baseline_name: "runc container: run to first byte".into(),
            baseline: runc,
            unit: Unit::Time,
        },
    ]
    .into_iter()
    .chain(jail_rows)
    .collect())
}

/// A parked task's cold request, `n` times: re-parked with `stop` before each.
fn cold_connects(c: &Containerd, addr: SocketAddr, n: usize) -> Result<Samples> {
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        "io.containerd.jitsu.v1",
        "docker.io/jitsu/hello:latest",
        "parked",
    ]);
    let control = c.control("parked");
    let mut cold = Samples::new();
    for _ in 0..n {
        let reply = try_request(&control, "stop")?;
        ensure!(reply.contains("\"parked\""), "{reply}");
        let t = Instant::now();
        c.ns.run_in(|| first_byte(addr, Instant::now() + Duration::from_secs(10)))?;
        cold.push(t.elapsed());
    }
    let _ = c.ctr(&["task", "kill", "-s", "SIGKILL", "parked"]);
    Ok(cold)
}
