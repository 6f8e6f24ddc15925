//! Rows measured on the KVM node beds, both under QEMU's emulation (only
//! the ratios mean anything): the arm64 bed (section `arm64`), and the
//! x86-64 bed (section `x86-emulated`), the same measurement of the same
//! host sections on x86-64 emulated the same way, so that the two
//! architectures' ratios compare. On the host, `rows` boots the bed and runs
//! `jitsu-bench bed-node` there (the cross build on arm64), which measures
//! exec to the first guest instruction (against exec of /bin/true), a
//! parked hello-http's cold connect to its first byte (against the same
//! request once it runs), and `ctr run` to the first byte of the unikernel
//! against runc running a static native server.

use std::process::Stdio;

use anyhow::{bail, Result};
use jitsu_e2e::testbed::{arm64_dir, copy_stripped, node_share, release_bin, run_in, Bed};

use crate::stats::Row;
use crate::{bed, containerd, lazy, monitor};

/// Host side: the rows, measured on `bed` (`Bed::Arm64` or `Bed::X86`).
pub fn rows(quick: bool, bed: Bed) -> Result<Vec<Row>> {
    let (bench, label) = match bed {
        Bed::X86 => (release_bin("jitsu-bench"), " (x86-64, emulated)"),
        _ => (arm64_dir().join("jitsu-bench"), " (arm64, emulated)"),
    };
    let share = tempfile::tempdir()?;
    let s = share.path();
    let env = node_share(bed, s, &["abi-test", "hello-http"]);
    copy_stripped(&bench, &s.join("bin/jitsu-bench"));
    let script = format!(
        "{env} {}\n/jitsu/bin/jitsu-bench bed-node",
        if quick { "JITSU_BENCH_QUICK=1" } else { "" }
    );
    let mut run = run_in(bed, s, &script);
    // A full run (not quick) takes longer than the beds' default limit,
    // which is sized for the test suites.
    if std::env::var_os("JITSU_TESTBED_TIMEOUT").is_none() {
        run.env("JITSU_TESTBED_TIMEOUT", "5400");
    }
    let out = run.stderr(Stdio::inherit()).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the bench failed on the {bed:?} bed ({}):\n{text}",
            out.status
        );
    }
    bed::read_rows(&text, label)
}

/// On the bed: measures the sections and prints their rows for the host,
/// each section's as soon as it is done, so that a console log
/// (`JITSU_TESTBED_CONSOLE`) shows how far a slow run got.
pub fn node_rows(quick: bool) -> Result<()> {
    let monitor = monitor::exec_rows(if quick { 20 } else { 100 })?;
    monitor.iter().for_each(bed::print);
    let exec_first = monitor
        .iter()
        .find(|r| r.name.starts_with("exec to first guest instruction"))
        .map(|r| r.samples.clone())
        .unwrap_or_else(crate::stats::Samples::new);
    lazy::rows(quick, exec_first)?.iter().for_each(bed::print);
    containerd::rows(quick)?.iter().for_each(bed::print);
    Ok(())
}
