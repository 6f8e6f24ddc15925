//! Monitors' logs: to stderr, at `JITSU_LOG` (`debug`, or per target as in
//! `jitsu_runtime=debug,warn`; warnings by default). A `Targets` filter, not
//! an `EnvFilter`: no regular expressions, whose tables would cost every
//! monitor resident memory.

pub fn init_monitor_logging() {
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
