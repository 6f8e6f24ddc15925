//! `containerd-shim-jitsu-v1`: containerd's runtime `io.containerd.jitsu.v1`.
//! Each container is a unikernel parked by its own monitor (`jitsu-monitor
//! --lazy`), booted on its first packet or DNS lookup; a Kubernetes pod's
//! containers share one shim, and its sandbox runs no guest.

mod bundle;
mod cgroup;
mod conduit;
mod container;
mod identity;
mod image;
mod monitor;
mod network;
mod process;
mod service;
mod state;

#[tokio::main]
async fn main() {
    containerd_shim::asynchronous::run::<service::Service>("io.containerd.jitsu.v1", None).await;
}
