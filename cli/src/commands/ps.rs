//! `jitsu ps`: the services in the registry and how they are doing.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;
use jitsu_registry::{self as registry, Service};
use jitsu_xenstore::server;
use jitsu_xenstore::Client;

#[derive(Args)]
pub struct PsArgs {
    /// The XenStore daemon [default: $XENSTORED_PATH, else /var/run/xenstored/socket].
    #[arg(long, value_name = "PATH")]
    xenstore_socket: Option<PathBuf>,
    /// One JSON object per service, in an array.
    #[arg(long)]
    json: bool,
}

pub fn run(args: PsArgs) -> Result<u8> {
    let socket = args
        .xenstore_socket
        .unwrap_or_else(server::default_socket_path);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let services = runtime.block_on(async {
        let client = Client::connect(&socket).await?;
        registry::read_all(&client).await
    });
    let services =
        services.with_context(|| format!("reading the registry at {}", socket.display()))?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if args.json {
        let rows: Vec<serde_json::Value> = services.iter().map(|s| json(s, now_ms)).collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(0);
    }
    println!(
        "{:<20} {:<16} {:<9} {:<10} {:>6} {:>10} {:>10}",
        "NAME", "ADDRESS", "STATE", "RUNS ON", "BOOTS", "LAST BOOT", "IDLE FOR"
    );
    for s in &services {
        println!(
            "{:<20} {:<16} {:<9} {:<10} {:>6} {:>10} {:>10}",
            s.name,
            s.ip.map_or("-".into(), |ip| ip.to_string()),
            s.state,
            runs_on(s),
            s.boots,
            s.last_boot_us
                .map_or("-".into(), |us| format!("{:.2} ms", us as f64 / 1000.0)),
            s.last_packet_ms.map_or("-".into(), |ms| format!(
                "{:.1} s",
                now_ms.saturating_sub(ms) as f64 / 1000.0
            )),
        );
    }
    Ok(0)
}

/// `kvm`, or `xen:` and the domain id (`-` when the registry does not say).
fn runs_on(s: &Service) -> String {
    match (s.hypervisor.as_str(), s.domid) {
        ("", _) => "-".into(),
        (h, Some(domid)) => format!("{h}:{domid}"),
        (h, None) => h.into(),
    }
}

fn json(s: &Service, now_ms: u64) -> serde_json::Value {
    serde_json::json!({
        "name": s.name,
        "address": s.ip.map(|ip| ip.to_string()),
        "state": s.state,
        "generation": s.generation,
        "boots": s.boots,
        "last_boot_us": s.last_boot_us,
        "idle_for_ms": s.last_packet_ms.map(|ms| now_ms.saturating_sub(ms)),
        "owner": s.owner,
        "hypervisor": (!s.hypervisor.is_empty()).then_some(&s.hypervisor),
        "domid": s.domid,
    })
}
