//! The registry as DNS needs it: a live copy of `/jitsu/services`, kept by
//! a watch (no polling), rebuilt after the XenStore daemon restarts, and the
//! client to ask for boots with.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jitsu_registry::{self as registry, Service, ROOT};
use jitsu_xenstore::Client;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio::sync::watch;

use crate::zone::Entry;

/// A metric's labels: `service="NAME"`.
pub type ServiceLabel = Vec<(String, String)>;
/// Boot latencies, per service, as the directory sees boots happen.
pub type BootLatencies = Family<ServiceLabel, Histogram, fn() -> Histogram>;

fn boot_latency_histogram() -> Histogram {
    // 100 µs to about 6.5 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

pub fn service_label(name: &str) -> ServiceLabel {
    vec![("service".to_string(), name.to_string())]
}

#[derive(Clone)]
pub struct Directory {
    services: Arc<RwLock<HashMap<String, Entry>>>,
    /// Everything each service's monitor publishes, for the metrics, and
    /// how many of its boots the latency histogram has counted.
    details: Arc<RwLock<HashMap<String, (Service, u64)>>>,
    boot_latencies: BootLatencies,
    client: Arc<RwLock<Option<Client>>>,
    /// Bumped on every change, for waiters (`--wait-ready`).
    changed: watch::Sender<u64>,
}

impl Directory {
    /// Starts following the registry on the XenStore daemon at `socket`.
    pub fn follow(socket: PathBuf) -> Directory {
        let (changed, _) = watch::channel(0);
        let dir = Directory {
            services: Arc::default(),
            details: Arc::default(),
            boot_latencies: Family::new_with_constructor(boot_latency_histogram),
            client: Arc::default(),
            changed,
        };
        tokio::spawn(dir.clone().run(socket));
        dir
    }

    pub fn services(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.services.read().unwrap_or_else(|e| e.into_inner())
    }

    /// What every registered service last published.
    pub fn details(&self) -> Vec<Service> {
        let details = self.details.read().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<Service> = details.values().map(|(s, _)| s.clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn boot_latencies(&self) -> &BootLatencies {
        &self.boot_latencies
    }

    pub fn client(&self) -> Option<Client> {
        self.client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    async fn run(self, socket: PathBuf) {
        loop {
            match Client::connect(&socket).await {
                Ok(client) => {
                    if let Err(e) = self.follow_connection(client).await {
                        tracing::info!(%e, "XenStore connection lost; reconnecting");
                    }
                }
                Err(e) => tracing::debug!(%e, "XenStore not reachable yet"),
            }
            *self.client.write().unwrap_or_else(|e| e.into_inner()) = None;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn follow_connection(&self, client: Client) -> Result<(), jitsu_xenstore::ClientError> {
        let mut watch = client.watch(ROOT).await?;
        *self.client.write().unwrap_or_else(|e| e.into_inner()) = Some(client.clone());
        self.resync(&client).await?;
        while let Some(event) = watch.next().await {
            match event
                .path
                .strip_prefix(ROOT)
                .and_then(|rest| rest.strip_prefix('/'))
            {
                Some(rest) => {
                    let name = rest.split('/').next().unwrap_or_default().to_string();
                    self.refresh(&client, &name).await?;
                }
                None => self.resync(&client).await?,
            }
        }
        Err(jitsu_xenstore::ClientError::Closed)
    }

    /// Keeps what `name` published, and counts a boot it reports (one
    /// more than last seen, with its latency) into its histogram.
    fn note_details(&self, name: &str, service: Option<&Service>) {
        let mut details = self.details.write().unwrap_or_else(|e| e.into_inner());
        let Some(service) = service else {
            details.remove(name);
            return;
        };
        // A boot's latency is published once it is known (the state says
        // running): count each boot once, when its latency appears.
        let counted = details.get(name).map_or(0, |(_, counted)| *counted);
        let counted = match service.last_boot_us {
            Some(us) if service.boots > counted && service.state == "running" => {
                self.boot_latencies
                    .get_or_create(&service_label(name))
                    .observe(us as f64 / 1e6);
                service.boots
            }
            _ => counted,
        };
        details.insert(name.to_string(), (service.clone(), counted));
    }

    async fn resync(&self, client: &Client) -> Result<(), jitsu_xenstore::ClientError> {
        let all = registry::read_all(client).await?;
        for s in &all {
            self.note_details(&s.name, Some(s));
        }
        let names: std::collections::HashSet<&str> = all.iter().map(|s| s.name.as_str()).collect();
        self.details
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|name, _| names.contains(name.as_str()));
        let map = all
            .into_iter()
            .filter_map(|s| {
                Some((
                    s.name.clone(),
                    Entry {
                        ip: s.ip?,
                        state: s.state,
                    },
                ))
            })
            .collect();
        *self.services.write().unwrap_or_else(|e| e.into_inner()) = map;
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn refresh(
        &self,
        client: &Client,
        name: &str,
    ) -> Result<(), jitsu_xenstore::ClientError> {
        let service = registry::read(client, name).await?;
        self.note_details(name, service.as_ref());
        let entry = service.and_then(|s| {
            Some(Entry {
                ip: s.ip?,
                state: s.state,
            })
        });
        let mut services = self.services.write().unwrap_or_else(|e| e.into_inner());
        let changed = match entry {
            Some(e) => services.insert(name.to_string(), e.clone()) != Some(e),
            None => services.remove(name).is_some(),
        };
        drop(services);
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
        Ok(())
    }
}
