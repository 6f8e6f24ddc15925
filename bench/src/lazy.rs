//! Lazy boot: how long a client waits for the first byte from a parked
//! service, against a running one, and without Synjitsu holding its SYN.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use jitsu_e2e::lazy::LazyHello;

use crate::stats::{Row, Samples, Unit};

/// Connect, send a GET, wait for the first byte of the answer.
pub(crate) fn first_byte(addr: SocketAddr) -> Result<Duration> {
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut byte = [0u8; 1];
    ensure!(s.read(&mut byte)? == 1, "no answer");
    let elapsed = t.elapsed();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    Ok(elapsed)
}

/// `cycles` cold requests, each to a freshly parked VM: connect to first
/// byte, and the boot's trigger to first guest instruction.
fn cold(server: &LazyHello, cycles: usize) -> Result<(Samples, Samples)> {
    let addr = SocketAddr::from((server.ns.guest_ip, 80));
    let (mut samples, mut boots) = (Samples::new(), Samples::new());
    for _ in 0..cycles {
        let parked = server.command("stop");
        ensure!(parked["state"] == "parked", "not parked: {parked}");
        samples.push(server.ns.run_in(|| first_byte(addr))?);
        if let Some(us) = server.status()["last_boot_latency_us"].as_u64() {
            boots.push(Duration::from_micros(us));
        }
    }
    Ok((samples, boots))
}

/// `exec_first` is exec to first guest instruction of an unparked run,
/// measured earlier in the same run: what parking takes off the path.
pub fn rows(quick: bool, exec_first: Samples) -> Result<Vec<Row>> {
    let cycles = if quick { 20 } else { 120 };
    let server = LazyHello::start(&[]);
    let (parked, boots) = cold(&server, cycles)?;
    let addr = SocketAddr::from((server.ns.guest_ip, 80));
    let mut running = Samples::new();
    for _ in 0..cycles {
        running.push(server.ns.run_in(|| first_byte(addr))?);
    }
    drop(server);

    // Without holding, the first SYN is dropped and the client's kernel
    // retransmits it a second later: a few cycles tell the story.
    let unheld = LazyHello::start(&["--no-hold"]);
    let (dropped, _) = cold(&unheld, if quick { 2 } else { 5 })?;
    Ok(vec![
        Row {
            name: "parked: trigger to first guest instruction".into(),
            samples: boots,
            baseline_name: "exec to first guest instruction".into(),
            baseline: exec_first,
            unit: Unit::Time,
        },
        Row {
            name: "parked hello-http: connect to first byte".into(),
            samples: parked.clone(),
            baseline_name: "same, guest already running".into(),
            baseline: running,
            unit: Unit::Time,
        },
        Row {
            name: "parked, holding off: connect to first byte".into(),
            samples: dropped,
            baseline_name: "parked with Synjitsu holding".into(),
            baseline: parked,
            unit: Unit::Time,
        },
    ])
}
