//! The registry as DNS needs it: a live copy of `/jitsu/services`, kept by
//! a watch (no polling), rebuilt after the XenStore daemon restarts, and the
//! client to ask for boots with.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jitsu_registry::{self as registry, ROOT};
use jitsu_xenstore::Client;
use tokio::sync::watch;

use crate::zone::Entry;

#[derive(Clone)]
pub struct Directory {
    services: Arc<RwLock<HashMap<String, Entry>>>,
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
            client: Arc::default(),
            changed,
        };
        tokio::spawn(dir.clone().run(socket));
        dir
    }

    pub fn services(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.services.read().unwrap_or_else(|e| e.into_inner())
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

    async fn resync(&self, client: &Client) -> Result<(), jitsu_xenstore::ClientError> {
        let all = registry::read_all(client).await?;
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
        let entry = registry::read(client, name).await?.and_then(|s| {
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
