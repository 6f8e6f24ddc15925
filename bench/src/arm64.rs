//! arm64 rows, measured on the arm64 test bed (an arm64 Debian node whose
//! KVM runs our guests nested, all under QEMU's emulation: only the ratios
//! mean anything). On the host, `rows` boots the bed and runs the cross
//! build's `jitsu-bench arm64-node` there, which measures the host's own
//! sections on arm64: exec to the first guest instruction (against exec of
//! /bin/true), a parked hello-http's cold connect to its first byte
//! (against the same request once it runs), and `ctr run` to the first
//! byte of the unikernel against runc running a static native server. The
//! same rows measured natively on this machine, in the same run, are the
//! x86-64 side.

use std::process::Stdio;

use anyhow::{bail, Result};
use jitsu_e2e::testbed::{arm64_dir, arm64_node_share, copy_stripped, run_in, Bed};

use crate::stats::Row;
use crate::{bed, containerd, lazy, monitor};

const EMULATED: &str = " (arm64, emulated)";

/// Host side: the rows, measured on the arm64 bed.
pub fn rows(quick: bool) -> Result<Vec<Row>> {
    let share = tempfile::tempdir()?;
    let s = share.path();
    let env = arm64_node_share(s, &["abi-test", "hello-http"]);
    copy_stripped(&arm64_dir().join("jitsu-bench"), &s.join("bin/jitsu-bench"));
    let script = format!(
        "{env} {}\n/jitsu/bin/jitsu-bench arm64-node",
        if quick { "JITSU_BENCH_QUICK=1" } else { "" }
    );
    let out = run_in(Bed::Arm64, s, &script)
        .stderr(Stdio::inherit())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the arm64 bench failed on the bed ({}):\n{text}",
            out.status
        );
    }
    bed::read_rows(&text, EMULATED)
}

/// On the bed: measures the sections and prints their rows for the host.
pub fn node_rows(quick: bool) -> Result<()> {
    let mut rows = monitor::exec_rows(if quick { 20 } else { 100 })?;
    let exec_first = rows
        .iter()
        .find(|r| r.name.starts_with("exec to first guest instruction"))
        .map(|r| r.samples.clone())
        .unwrap_or_else(crate::stats::Samples::new);
    rows.extend(lazy::rows(quick, exec_first)?);
    rows.extend(containerd::rows(quick)?);
    for row in &rows {
        bed::print(row);
    }
    Ok(())
}
