//! The DNS directory: lookup to first HTTP byte for a parked service, and
//! how many lookups a second it answers.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use jitsu_e2e::lazy::try_request;
use jitsu_e2e::node::Node;

use crate::stats::{Row, Samples, Unit};

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Looks `hello` up and returns the A record (the answer's last 4 bytes).
fn lookup(socket: &UdpSocket, id: u16) -> Result<Ipv4Addr> {
    socket.send_to(&query(id, "hello.jitsu.internal"), "127.0.0.1:53")?;
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf)?;
    ensure!(
        n >= 16 && u16::from_be_bytes([buf[6], buf[7]]) == 1,
        "no answer"
    );
    Ok(Ipv4Addr::new(
        buf[n - 4],
        buf[n - 3],
        buf[n - 2],
        buf[n - 1],
    ))
}

/// Lookup, connect, GET, first byte.
fn lookup_to_first_byte(id: u16) -> Result<Duration> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let t = Instant::now();
    let ip = lookup(&socket, id)?;
    let looked_up = t.elapsed();
    Ok(looked_up + crate::lazy::first_byte(SocketAddr::from((ip, 80)))?)
}

/// `total` lookups with `window` in flight, from one socket; returns the
/// per-lookup times and the rate.
fn load(total: usize, window: usize) -> Result<(Samples, f64)> {
    load_names(total, window, |_| "hello.jitsu.internal".into())
}

/// As [`load`], lookup `i` for `name(i)`.
fn load_names(
    total: usize,
    window: usize,
    name: impl Fn(usize) -> String,
) -> Result<(Samples, f64)> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut sent_at = vec![None; total];
    let mut samples = Samples::new();
    let (mut sent, mut received) = (0usize, 0usize);
    let started = Instant::now();
    let mut buf = [0u8; 512];
    while received < total {
        while sent < total && sent - received < window {
            socket.send_to(&query(sent as u16, &name(sent)), "127.0.0.1:53")?;
            sent_at[sent] = Some(Instant::now());
            sent += 1;
        }
        match socket.recv(&mut buf) {
            Ok(n) if n >= 2 => {
                let id = u16::from_be_bytes([buf[0], buf[1]]) as usize;
                // Ids wrap at 65536; the window keeps them unambiguous.
                let index = (received / 65536) * 65536 + id;
                if let Some(at) = sent_at.get_mut(index).and_then(Option::take) {
                    samples.push(at.elapsed());
                }
                received += 1;
            }
            Ok(_) => {}
            Err(_) => bail!("lookups went unanswered ({received} of {total})"),
        }
    }
    Ok((samples, total as f64 / started.elapsed().as_secs_f64()))
}

/// Another directory, for `upstream.test.`, on 127.0.0.2:53 of the node's
/// namespace: the forwarder's upstream.
pub fn rows(quick: bool) -> Result<Vec<Row>> {
    let node = Node::start(false, &["--forward", "127.0.0.2:53"]);
    let (_upstream, _) = node.start_upstream();
    let cycles = if quick { 10 } else { 60 };
    let (mut parked, mut running) = (Samples::new(), Samples::new());
    for i in 0..cycles {
        let reply = try_request(&node.control, "stop")?;
        ensure!(reply.contains("\"parked\""), "not parked: {reply}");
        node.wait_state("parked");
        parked.push(node.ns.run_in(|| lookup_to_first_byte(i as u16))?);
    }
    for i in 0..cycles {
        running.push(node.ns.run_in(|| lookup_to_first_byte(i as u16))?);
    }
    let total = if quick { 5_000 } else { 50_000 };
    let (loaded, rate) = node.ns.run_in(|| load(total, 32))?;
    let loaded_for_forward = loaded.clone();
    let (single, _) = node.ns.run_in(|| load(total / 10, 1))?;
    // Names the cache has never seen: every one goes to the upstream.
    let (forwarded, forwarded_rate) = node
        .ns
        .run_in(|| load_names(total / 5, 32, |i| format!("n{i}.upstream.test")))?;
    Ok(vec![
        Row {
            name: "lookup to first HTTP byte, parked".into(),
            samples: parked,
            baseline_name: "same, guest already running".into(),
            baseline: running,
            unit: Unit::Time,
        },
        Row {
            name: format!("DNS lookups, 32 in flight: {:.0}k/s", rate / 1000.0),
            samples: loaded,
            baseline_name: "one lookup at a time".into(),
            baseline: single,
            unit: Unit::Time,
        },
        Row {
            name: format!(
                "DNS forwarded, new names, 32 in flight: {:.0}k/s",
                forwarded_rate / 1000.0
            ),
            samples: forwarded,
            baseline_name: "answers from the zone, 32 in flight".into(),
            baseline: loaded_for_forward,
            unit: Unit::Time,
        },
    ])
}
