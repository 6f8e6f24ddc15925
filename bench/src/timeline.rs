//! Scale from zero on real timelines: a request after a parking far longer
//! than the idle timeout, a hundred first requests at once, and a pooled
//! keep-alive client whose VM was parked under it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use jitsu_e2e::fleet::Fleet;
use jitsu_e2e::lazy::LazyHello;

use crate::lazy::first_byte;
use crate::stats::{Row, Samples, Unit};

const IDLE: Duration = Duration::from_millis(200);
const STORM: usize = 100;

pub fn rows(quick: bool) -> Result<Vec<Row>> {
    let mut rows = vec![long_parking(if quick { 5 } else { 30 })?];
    rows.push(storm(if quick { 1 } else { 3 })?);
    rows.push(keep_alive(if quick { 5 } else { 30 })?);
    Ok(rows)
}

/// Re-parked by idleness, left parked three times as long, then one request.
fn long_parking(cycles: usize) -> Result<Row> {
    let server = LazyHello::start(&["--idle-timeout", "200ms"]);
    let addr = SocketAddr::from((server.ns.guest_ip, 80));
    let (mut cold, mut warm) = (Samples::new(), Samples::new());
    for n in 1..=cycles as u64 {
        cold.push(server.ns.run_in(|| first_byte(addr))?);
        warm.push(server.ns.run_in(|| first_byte(addr))?);
        server.wait_until(
            |s| s["state"] == "parked" && s["boots"] == n,
            Duration::from_secs(10),
        );
        std::thread::sleep(IDLE * 3);
    }
    Ok(Row {
        name: "parked 3x idle timeout: connect to first byte".into(),
        samples: cold,
        baseline_name: "same, guest already running".into(),
        baseline: warm,
        unit: Unit::Time,
    })
}

/// A hundred parked services, parked past their idle timeout, and a first
/// request to each at the same instant; against one cold request alone.
fn storm(rounds: usize) -> Result<Row> {
    let fleet = Fleet::start(STORM, &["--idle-timeout", "1s"]);
    let (mut samples, mut retransmissions) = (Samples::new(), 0);
    for round in 1..=rounds as u64 {
        std::thread::sleep(Duration::from_secs(2));
        for answer in fleet.storm() {
            ensure!(answer.reply.starts_with("HTTP/1.1 200"), "{}", answer.reply);
            retransmissions += answer.retransmissions;
            samples.push(answer.took);
        }
        fleet.wait_until_all(
            |s| s["state"] == "parked" && s["boots"] == round,
            Duration::from_secs(30),
        );
    }
    let one = &fleet.services[0];
    let addr = SocketAddr::from((one.ip, 80));
    let mut alone = Samples::new();
    for _ in 0..20 {
        jitsu_e2e::lazy::try_request(&one.control, "stop")?;
        alone.push(fleet.ns.run_in(|| first_byte(addr))?);
    }
    Ok(Row {
        name: format!("{STORM} parked at once: connect to reply ({retransmissions} retransmitted)"),
        samples,
        baseline_name: "one cold request alone".into(),
        baseline: alone,
        unit: Unit::Time,
    })
}

/// A client keeps its connection while the VM is parked under it: from its
/// next request to the first byte of the answer, through the reset and a
/// new connection that boots a fresh VM.
fn keep_alive(cycles: usize) -> Result<Row> {
    let server = LazyHello::start(&[]);
    let addr = SocketAddr::from((server.ns.guest_ip, 80));
    let (mut pooled, mut fresh) = (Samples::new(), Samples::new());
    for _ in 0..cycles {
        let mut stream = server.ns.run_in(|| TcpStream::connect(addr))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        request(&mut stream)?;
        let mut reply = [0u8; 4096];
        ensure!(stream.read(&mut reply)? > 0, "no first answer");
        server.command("stop");
        let t = Instant::now();
        let reset = request(&mut stream).and_then(|()| stream.read(&mut reply).map(drop));
        ensure!(reset.is_err(), "the old connection still answered");
        server.ns.run_in(|| first_byte(addr))?;
        pooled.push(t.elapsed());
        server.command("stop");
        fresh.push(server.ns.run_in(|| first_byte(addr))?);
    }
    Ok(Row {
        name: "kept-alive client after a re-park: to first byte".into(),
        samples: pooled,
        baseline_name: "a new client to the parked VM".into(),
        baseline: fresh,
        unit: Unit::Time,
    })
}

fn request(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
}
