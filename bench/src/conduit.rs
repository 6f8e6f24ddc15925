//! Conduit between two unikernels against TCP between the same two through
//! the node's bridge, in the same run: round trips of a small message (the
//! probe's `ping`, the counter's `pong`), and bulk throughput one way. The
//! probe measures inside the guest (TSC), so the rows carry its median and
//! 99th percentile.

use anyhow::{bail, Context, Result};
use jitsu_e2e::conduit::{describe, ConduitNode};

use crate::stats::{Row, Samples, Unit};

/// A probe's report line, `probe: ... key=value ...`, as key/values.
fn report(out: &std::process::Output) -> Result<Vec<(String, f64)>> {
    if !out.status.success() {
        bail!("the probe failed: {}", describe(out));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("probe: rtt") || l.starts_with("probe: bulk"))
        .with_context(|| format!("no report: {text}"))?;
    Ok(line
        .split_whitespace()
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect())
}

fn value(report: &[(String, f64)], key: &str) -> Result<f64> {
    report
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| *v)
        .with_context(|| format!("no {key} in the report"))
}

/// Round trips as the probe summarised them (seconds).
fn round_trips(out: &std::process::Output) -> Result<Samples> {
    let r = report(out)?;
    Ok(Samples::Summary {
        n: value(&r, "n")? as usize,
        median: value(&r, "median_ns")? * 1e-9,
        p99: value(&r, "p99_ns")? * 1e-9,
    })
}

pub fn rows(quick: bool) -> Result<Vec<Row>> {
    let node = ConduitNode::start();
    let counter = node.counter("counter", "default", &[]);
    let lazy_counter = node.parked("counter", "counter-asleep", "default", &[], &["spin=0"]);
    let tcp_target = counter.ip.to_string();
    let n = if quick { "500" } else { "5000" };
    // The first connection boots the counter: a warm-up, not measured.
    report(&node.probe("warm-up", "default", &["rtt", "conduit", "counter", "20"]))?;
    report(&node.probe(
        "warm-up-2",
        "default",
        &["rtt", "conduit", "counter-asleep", "20"],
    ))?;
    let conduit_rtt = round_trips(&node.probe("p1", "default", &["rtt", "conduit", "counter", n]))?;
    let asleep_rtt = round_trips(&node.probe(
        "p2",
        "default",
        &["rtt", "conduit", "counter-asleep", n, "spin=0"],
    ))?;
    let tcp_rtt = round_trips(&node.probe_on_bridge("p3", &["rtt", "tcp", &tcp_target, n]))?;

    let runs = if quick { 2 } else { 5 };
    let mib = if quick { "64" } else { "256" };
    let (mut conduit_bulk, mut tcp_bulk) = (Samples::new(), Samples::new());
    for i in 0..runs {
        let c = report(&node.probe(
            &format!("b{i}"),
            "default",
            &["bulk", "conduit", "counter", mib],
        ))?;
        conduit_bulk.push_value(value(&c, "mib_per_s")?);
        let t =
            report(&node.probe_on_bridge(&format!("t{i}"), &["bulk", "tcp", &tcp_target, mib]))?;
        tcp_bulk.push_value(value(&t, "mib_per_s")?);
    }
    drop(lazy_counter);
    let tcp_name = "the same over TCP (bridge)";
    Ok(vec![
        Row {
            name: "Conduit round trip, 5 B (unikernel to unikernel)".into(),
            samples: conduit_rtt,
            baseline_name: tcp_name.into(),
            baseline: tcp_rtt.clone(),
            unit: Unit::Time,
        },
        Row {
            name: "Conduit round trip, 5 B, neither end spinning".into(),
            samples: asleep_rtt,
            baseline_name: tcp_name.into(),
            baseline: tcp_rtt,
            unit: Unit::Time,
        },
        Row {
            name: format!("Conduit throughput, {mib} MiB one way (higher: faster)"),
            samples: conduit_bulk,
            baseline_name: tcp_name.into(),
            baseline: tcp_bulk,
            unit: Unit::Rate,
        },
    ])
}
