//! `jitsu-monitor`: one unikernel's monitor, and nothing else. The shim and
//! `jitsu run` exec it; it links the supervisor and the KVM backend, and no
//! DNS server, XenStore daemon, image writer or other commands, so that
//! every parked service costs as little as it can.

mod args;
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
    let start_monotonic = args::monotonic_nanos();
    init_logging();
    let monitor = Monitor::parse();
    match run::run(monitor.args, start, start_monotonic) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("jitsu: error: {err:#}");
            ExitCode::from(jitsu_runtime::EXIT_SETUP_FAILED as u8)
        }
    }
}

/// Logs to stderr at `JITSU_LOG` (`debug`, or per target as in
/// `jitsu_runtime=debug,warn`; warnings by default). A `Targets` filter, not
/// an `EnvFilter`: no regular expressions, whose tables would cost every
/// monitor resident memory.
fn init_logging() {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let filter = std::env::var("JITSU_LOG")
        .ok()
        .and_then(|f| f.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::WARN));
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();
}
