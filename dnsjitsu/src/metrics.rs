//! `--metrics ADDR`: the node's services in Prometheus' text format, from
//! the registry as the directory follows it: per service its boots, a
//! histogram of boot latencies (counted as the directory sees boots
//! happen), its state, what runs it (hypervisor, Xen domain), and the frames Synjitsu held or dropped and the
//! guest had refused. A minimal HTTP/1.1 responder: `GET /metrics` only,
//! a bounded request read with a deadline, one answer per connection.

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::directory::{service_label, Directory, ServiceLabel};

/// A request longer than this is not a metrics scrape.
const REQUEST_MAX: usize = 8 << 10;
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
const STATES: [&str; 3] = ["parked", "booting", "running"];

/// The text exposition of what `directory` knows now.
pub fn render(directory: &Directory) -> String {
    let mut registry = Registry::default();
    let boots = Family::<ServiceLabel, Counter>::default();
    let held = Family::<ServiceLabel, Counter>::default();
    let dropped = Family::<ServiceLabel, Counter>::default();
    let refused = Family::<ServiceLabel, Counter>::default();
    let state = Family::<ServiceLabel, Gauge>::default();
    let info = Family::<ServiceLabel, Gauge>::default();
    for s in directory.details() {
        let label = service_label(&s.name);
        let mut runs_on = label.clone();
        runs_on.push(("hypervisor".into(), s.hypervisor.clone()));
        runs_on.push((
            "domid".into(),
            s.domid.map(|d| d.to_string()).unwrap_or_default(),
        ));
        info.get_or_create(&runs_on).set(1);
        boots.get_or_create(&label).inc_by(s.boots);
        held.get_or_create(&label).inc_by(s.held_frames);
        dropped.get_or_create(&label).inc_by(s.dropped_frames);
        refused.get_or_create(&label).inc_by(s.refused_frames);
        for name in STATES {
            let mut with_state = label.clone();
            with_state.push(("state".into(), name.into()));
            state
                .get_or_create(&with_state)
                .set((s.state == name) as i64);
        }
    }
    registry.register("jitsu_service_boots", "Boots of the service", boots);
    registry.register(
        "jitsu_service_info",
        "1, labelled with what runs the service: its hypervisor and (on Xen) the domain standing for it",
        info,
    );
    registry.register(
        "jitsu_service_boot_latency_seconds",
        "From the trigger to the guest's first instruction",
        directory.boot_latencies().clone(),
    );
    registry.register(
        "jitsu_service_state",
        "1 for the state the service is in",
        state,
    );
    registry.register(
        "jitsu_service_held_frames",
        "Frames Synjitsu held for the service while it booted",
        held,
    );
    registry.register(
        "jitsu_service_dropped_frames",
        "Frames Synjitsu dropped for the service (its hold was full)",
        dropped,
    );
    registry.register(
        "jitsu_service_refused_frames",
        "Frames the guest sent with another's address, refused",
        refused,
    );
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

/// Serves the metrics on `listener` until the future is dropped.
pub async fn serve(listener: TcpListener, directory: Directory) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: let some close first.
                tracing::debug!(%e, "accepting a metrics connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let directory = directory.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &directory).await {
                tracing::debug!(%e, "a metrics request");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, directory: &Directory) -> std::io::Result<()> {
    let mut request = Vec::new();
    let read = tokio::time::timeout(REQUEST_DEADLINE, async {
        let mut chunk = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).await?;
            if n == 0 || request.len() + n > REQUEST_MAX {
                return Err(std::io::Error::other("not a complete request"));
            }
            request.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    });
    read.await
        .map_err(|_| std::io::Error::other("request deadline"))??;
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let (status, body) = if line.starts_with(b"GET /metrics ") {
        ("200 OK", render(directory))
    } else {
        ("404 Not Found", "only GET /metrics is served\n".to_string())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
