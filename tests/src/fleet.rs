//! Many lazy services on one node: a private namespace with a bridge, one
//! TAP per service on it, and a `jitsu run --lazy` monitor for each.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::lazy::try_request;
use crate::netns::NetNs;
use crate::process::Guarded;
use crate::{guest, jitsu_bin};

pub struct Service {
    pub ip: Ipv4Addr,
    pub control: PathBuf,
    pub monitor: Guarded,
}

pub struct Fleet {
    pub ns: NetNs,
    pub services: Vec<Service>,
    _dir: tempfile::TempDir,
}

/// What one client of a storm saw.
#[derive(Debug)]
pub struct Answer {
    pub reply: String,
    pub retransmissions: u32,
    /// Connect to the whole reply.
    pub took: Duration,
}

impl Fleet {
    /// `count` parked hello-http services, `extra` on each `jitsu run`.
    pub fn start(count: usize, extra: &[&str]) -> Fleet {
        Fleet::start_in(count, extra, |_| {})
    }

    /// As `start`, with `prepare` applied to each monitor's command (to
    /// put it in a cgroup, say).
    pub fn start_in(
        count: usize,
        extra: &[&str],
        prepare: impl Fn(&mut std::process::Command),
    ) -> Fleet {
        let ns = NetNs::with_bridge();
        let dir = tempfile::tempdir().expect("temp dir");
        let services = (0..count)
            .map(|i| {
                let tap = format!("jf{i}");
                ns.add_bridge_tap(&tap);
                let ip = Ipv4Addr::new(10, 77, 1 + (i / 200) as u8, 2 + (i % 200) as u8);
                let control = dir.path().join(format!("{i}.ctl"));
                let mut cmd = ns.command(jitsu_bin());
                cmd.args(["run", "--lazy", "--control"])
                    .arg(&control)
                    .args(extra)
                    .args(["--net", &tap, "--ip", &format!("{ip}/16"), "--gw"])
                    .arg(ns.host_ip.to_string())
                    .arg(guest("hello-http"))
                    .stdout(Stdio::null());
                prepare(&mut cmd);
                Service {
                    ip,
                    control,
                    monitor: Guarded::spawn(&mut cmd),
                }
            })
            .collect();
        let fleet = Fleet {
            ns,
            services,
            _dir: dir,
        };
        fleet.wait_until_all(|s| s["state"] == "parked", Duration::from_secs(60));
        fleet
    }

    /// Every service's status.
    pub fn statuses(&self) -> Vec<serde_json::Value> {
        self.services
            .iter()
            .map(|s| {
                try_request(&s.control, "status")
                    .ok()
                    .and_then(|r| serde_json::from_str(&r).ok())
                    .unwrap_or(serde_json::Value::Null)
            })
            .collect()
    }

    pub fn wait_until_all(&self, pred: impl Fn(&serde_json::Value) -> bool, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.statuses();
            if statuses.iter().all(&pred) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not every service got there within {timeout:?}: {:?}",
                statuses
                    .iter()
                    .filter(|s| !pred(s))
                    .take(3)
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One GET to every service, all let go at the same instant.
    pub fn storm(&self) -> Vec<Answer> {
        let addrs: Vec<SocketAddr> = self
            .services
            .iter()
            .map(|s| SocketAddr::from((s.ip, 80)))
            .collect();
        self.ns.run_in(|| {
            let start = Barrier::new(addrs.len());
            std::thread::scope(|scope| {
                let clients: Vec<_> = addrs
                    .iter()
                    .map(|&addr| {
                        let start = &start;
                        // Threads inherit this thread's network namespace.
                        scope.spawn(move || {
                            start.wait();
                            let t = Instant::now();
                            let (reply, retransmissions) = crate::http::get(addr);
                            Answer {
                                reply,
                                retransmissions,
                                took: t.elapsed(),
                            }
                        })
                    })
                    .collect();
                clients
                    .into_iter()
                    .map(|c| c.join().expect("client thread"))
                    .collect()
            })
        })
    }
}
