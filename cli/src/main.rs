//! `jitsu`: the command-line tool.

mod args;
mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "jitsu",
    version,
    about = "Just-in-time unikernels for containerd and Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a unikernel on KVM, or park it (--lazy), or as a Xen domain on a
    /// dom0 (`--hypervisor kvm|xen|auto` first): the monitor's own options
    /// follow (`jitsu run --help`).
    #[command(disable_help_flag = true)]
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Run the node's services: XenStore and the DNS directory.
    Daemon(commands::daemon::DaemonArgs),
    /// Package a unikernel ELF as an OCI image archive (for `ctr images import`).
    Pack(commands::pack::PackArgs),
    /// List the registered services.
    Ps(commands::ps::PsArgs),
    /// Ask a lazy monitor to boot, stop, or report its status.
    Control(commands::control::ControlArgs),
    /// Serve XenStore on a unix socket (what Xen's xenstore-* tools talk to).
    Xenstored(commands::xenstored::XenstoredArgs),
    /// Install jitsu and the shim on a node and add the runtime to containerd (the installer DaemonSet's job).
    InstallNode(commands::install_node::InstallNodeArgs),
    /// Pack the static jitsu and shim as the node installer's OCI image.
    #[command(hide = true)]
    PackInstaller(commands::pack::PackInstallerArgs),
    /// Hold a pod's network namespace until told to end (the shim's pod sandbox).
    #[command(hide = true)]
    Pause(commands::pause::PauseArgs),
}

fn main() -> ExitCode {
    // `jitsu run` is on the boot path of every monitor: become the monitor
    // before anything else happens here.
    if std::env::args_os().nth(1).is_some_and(|a| a == "run") {
        return exit(commands::run::exec(std::env::args_os().skip(2)));
    }
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { args } => commands::run::exec(args),
        Command::Xenstored(args) => commands::xenstored::run(args),
        Command::Control(args) => commands::control::run(args),
        Command::Daemon(args) => commands::daemon::run(args),
        Command::Ps(args) => commands::ps::run(args),
        Command::Pack(args) => commands::pack::run(args),
        Command::Pause(args) => commands::pause::run(args),
        Command::InstallNode(args) => commands::install_node::run(args),
        Command::PackInstaller(args) => commands::pack::run_installer(args),
    };
    exit(result)
}

fn exit(result: anyhow::Result<u8>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("jitsu: error: {err:#}");
            ExitCode::from(jitsu_runtime::EXIT_SETUP_FAILED as u8)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("JITSU_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
