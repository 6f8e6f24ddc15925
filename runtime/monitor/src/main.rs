//! `jitsu-monitor`: one unikernel's monitor, and nothing else. The shim and
//! `jitsu run` exec it; it links the supervisor and the KVM backend, and no
//! DNS server, XenStore daemon, image writer or other commands, so that
//! every parked service costs as little as it can.

mod conduit;
mod run;

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

/// The arguments of `jitsu run`.
#[derive(Parser)]
#[command(
    name = "jitsu run",
    bin_name = "jitsu run",
    version,
    about = "Boot a unikernel ELF directly on KVM, or park it and boot it on demand (--lazy)."
)]
struct Monitor {
    #[command(flatten)]
    args: run::RunArgs,
}

fn main() -> ExitCode {
    let start = Instant::now();
    let start_monotonic = jitsu_runtime::args::monotonic_nanos();
    jitsu_runtime::logging::init_monitor_logging();
    let monitor = Monitor::parse();
    match run::run(monitor.args, start, start_monotonic) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("jitsu: error: {err:#}");
            ExitCode::from(jitsu_runtime::EXIT_SETUP_FAILED as u8)
        }
    }
}
