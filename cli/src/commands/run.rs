//! `jitsu run`: boot a unikernel ELF on KVM, no containerd involved.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use jitsu_runtime::{NetSetup, Outcome, RunReport, Vm, VmConfig};

use crate::args;

#[derive(Args)]
pub struct RunArgs {
    /// Guest memory (multiple of 2M, at most 4G).
    #[arg(long, default_value = "16M", value_parser = args::parse_size)]
    mem: u64,
    /// Existing TAP interface to give the guest as its NIC.
    #[arg(long, value_name = "TAP")]
    net: Option<String>,
    /// The guest's MAC address (default: 02:4a and the four bytes of --ip).
    #[arg(long, value_parser = args::parse_mac, requires = "net")]
    mac: Option<[u8; 6]>,
    /// The guest's IPv4 address and prefix length.
    #[arg(long, value_name = "ADDR/PREFIX", value_parser = args::parse_cidr, requires = "net")]
    ip: Option<(Ipv4Addr, u8)>,
    /// The guest's default gateway.
    #[arg(long, value_name = "ADDR", requires = "net")]
    gw: Option<Ipv4Addr>,
    /// Print the phases of the run, in microseconds since jitsu started.
    #[arg(long)]
    timings: bool,
    /// The unikernel ELF.
    kernel: PathBuf,
    /// Command line handed to the guest.
    #[arg(last = true)]
    args: Vec<String>,
}

pub fn run(args: RunArgs, start: Instant, start_monotonic: u64) -> Result<u8> {
    let kernel =
        std::fs::read(&args.kernel).with_context(|| format!("{}", args.kernel.display()))?;
    let net = match &args.net {
        Some(tap) => {
            let Some((ipv4, prefix_len)) = args.ip else {
                bail!("--net {tap} needs --ip ADDR/PREFIX: the guest has no other way to learn its address");
            };
            Some(NetSetup {
                tap: tap.clone(),
                mac: args.mac.unwrap_or_else(|| args::default_mac(Some(ipv4))),
                ipv4,
                prefix_len,
                gateway: args.gw,
            })
        }
        None => None,
    };
    let config = VmConfig {
        mem_size: args.mem,
        cmdline: args.args.join(" "),
        net,
    };
    let vm = Vm::create(&kernel, &config, start)
        .with_context(|| format!("{}", args.kernel.display()))?;
    let report = vm
        .run()
        .with_context(|| format!("{}", args.kernel.display()))?;
    describe_end(&args.kernel, &report.outcome);
    if args.timings {
        print_timings(&report, start_monotonic);
    }
    Ok(report.outcome.exit_code() as u8)
}

fn describe_end(kernel: &std::path::Path, outcome: &Outcome) {
    match outcome {
        Outcome::Halted(_) => {}
        Outcome::Crashed { reason, registers } => {
            eprintln!(
                "jitsu: {}: guest crashed: {reason}\n{registers}",
                kernel.display()
            );
        }
        Outcome::Violation(err) => {
            eprintln!("jitsu: {}: guest stopped: {err}", kernel.display());
        }
    }
}

fn print_timings(report: &RunReport, start_monotonic: u64) {
    let t = &report.timings;
    let us = |d: Duration| d.as_micros();
    let first = t
        .first_instruction
        .map_or_else(|| "unknown".to_string(), |d| us(d).to_string());
    eprintln!(
        "jitsu: timings (us since start): vm_create={} load={} run={} first_instruction={} exit={} start_monotonic_ns={}",
        us(t.vm_create),
        us(t.load),
        us(t.run),
        first,
        us(t.exit),
        start_monotonic,
    );
}
