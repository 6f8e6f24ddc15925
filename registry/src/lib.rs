//! The service registry in XenStore, as every Jitsu component reads and
//! writes it (the monitors' registry agents, `dnsjitsu`, `jitsu ps`, the
//! shim's cleanup); the protocol itself is `jitsu-xenstore`'s:
//!
//! ```text
//! /jitsu/services/<name>/ip        "10.77.0.2"
//!                       /state     parked | booting | running (one writer: the monitor)
//!                       /generation  which parking this is: 1 at the first, +1 at each
//!                       /boot      a boot request, tagged with the generation it is for
//!                       /owner     who registered it (monitor pid, container id)
//!                       /hypervisor  kvm | xen
//!                       /domid     the Xen domain standing for it now (Xen only)
//!                       /stats/boots, /stats/last_boot_us, /stats/last_packet_ms,
//!                        /stats/held_frames, /stats/dropped_frames, /stats/refused_frames
//! ```
//!
//! A name belongs to its `owner`: whoever claims it first (the shim, for a
//! container, before its monitor starts; else the monitor). Claiming,
//! publishing, updating and removing all read `owner` in the same
//! transaction as they write, so a second claimant is refused rather than
//! taking the name over, and removing one service never deletes another's
//! entry.
//!
//! A boot request names the parking it was made for, not a time: the
//! monitor boots only for its current generation, so a request that arrives
//! late (after the service ran and was parked again) is recognised without
//! comparing clocks across processes, and an NTP step changes nothing.

use std::net::Ipv4Addr;

use jitsu_xenstore::{Client, ClientError, Transaction, XsError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("the name {name:?} is registered by {owner} already")]
    Taken { name: String, owner: String },
    #[error(transparent)]
    Xs(#[from] ClientError),
}

pub const ROOT: &str = "/jitsu/services";

/// Who a jailed monitor is: the shim runs each container's monitor as its
/// own uid, `MONITOR_UID_BASE + slot`, and Jitsu's XenStore daemon takes a
/// client of that uid for domain `slot + 1`, which may write only the
/// entries it owns. Far above the uids of users and of user namespaces'
/// usual subordinate ranges.
pub mod identity {
    pub const MONITOR_UID_BASE: u32 = 0x5a00_0000;
    /// Slots, and so domains: domain ids stay below Xen's reserved range.
    pub const MONITOR_SLOTS: u32 = 0x7f00;

    pub fn monitor_uid(slot: u32) -> u32 {
        MONITOR_UID_BASE + slot
    }

    /// The XenStore domain of the monitor in `slot`.
    pub fn domid_of_slot(slot: u32) -> u32 {
        slot + 1
    }

    /// The XenStore domain of a client running as `uid`: dom0 for root, a
    /// monitor's own domain for a monitor's uid, none for anyone else.
    pub fn domid_of_uid(uid: u32) -> Option<u32> {
        match uid {
            0 => Some(0),
            u if (MONITOR_UID_BASE..MONITOR_UID_BASE + MONITOR_SLOTS).contains(&u) => {
                Some(domid_of_slot(u - MONITOR_UID_BASE))
            }
            _ => None,
        }
    }
}

pub fn service_path(name: &str) -> String {
    format!("{ROOT}/{name}")
}

/// Service names are DNS labels: 1–63 of `[a-z0-9-]`, not starting or
/// ending with `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// What a monitor publishes about its service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Service {
    pub name: String,
    pub ip: Option<Ipv4Addr>,
    pub state: String,
    pub generation: u64,
    pub owner: String,
    pub boots: u64,
    pub last_boot_us: Option<u64>,
    pub last_packet_ms: Option<u64>,
    /// Frames Synjitsu held for (or dropped at) a boot, and frames the
    /// guest sent with another's address, over the monitor's life.
    pub held_frames: u64,
    pub dropped_frames: u64,
    pub refused_frames: u64,
    /// Which hypervisor runs it (`kvm`, `xen`).
    pub hypervisor: String,
    /// The Xen domain that stands for it now (a fresh one at each parking).
    pub domid: Option<u32>,
}

impl Service {
    /// The keys and values to write, relative to the service's path.
    fn entries(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ip", self.ip.map(|ip| ip.to_string()).unwrap_or_default()),
            ("state", self.state.clone()),
            ("generation", self.generation.to_string()),
            ("owner", self.owner.clone()),
            ("stats/boots", self.boots.to_string()),
            (
                "stats/last_boot_us",
                self.last_boot_us.map(|v| v.to_string()).unwrap_or_default(),
            ),
            (
                "stats/last_packet_ms",
                self.last_packet_ms
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            ),
            ("stats/held_frames", self.held_frames.to_string()),
            ("stats/dropped_frames", self.dropped_frames.to_string()),
            ("stats/refused_frames", self.refused_frames.to_string()),
            ("hypervisor", self.hypervisor.clone()),
            (
                "domid",
                self.domid.map(|d| d.to_string()).unwrap_or_default(),
            ),
        ]
    }
}

/// Who owns `base` as this transaction sees it (`None`: nobody).
async fn owner_in(tx: &Transaction, base: &str) -> Result<Option<String>, ClientError> {
    match tx.read(&format!("{base}/owner")).await {
        Ok(owner) => Ok(Some(String::from_utf8_lossy(&owner).into_owned())),
        Err(ClientError::Xs(XsError::NoEnt)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Runs `write` in a transaction if `name` is unowned or owned by `owner`;
/// else ends it unwritten and says who owns it.
async fn as_owner<W, F>(
    client: &Client,
    name: &str,
    owner: &str,
    write: W,
) -> Result<(), RegistryError>
where
    W: Fn(Transaction, String) -> F + Clone,
    F: std::future::Future<Output = Result<(), ClientError>>,
{
    let base = service_path(name);
    let holder = client
        .transact(|tx| {
            let (base, write) = (base.clone(), write.clone());
            async move {
                match owner_in(&tx, &base).await? {
                    Some(holder) if holder != owner => Ok(Some(holder)),
                    _ => write(tx, base).await.map(|()| None),
                }
            }
        })
        .await?;
    match holder {
        None => Ok(()),
        Some(owner) => Err(RegistryError::Taken {
            name: name.to_string(),
            owner,
        }),
    }
}

/// Makes the registry's root, owned by dom0, where any domain may create
/// an entry (its own) but none may list or read what others wrote unless
/// the entry says so. Run by the XenStore daemon that holds the registry.
pub async fn prepare_root(client: &Client) -> Result<(), ClientError> {
    client.mkdir(ROOT).await?;
    client.set_perms(ROOT, &["w0"]).await
}

/// Leaves `base` readable by everyone and writable by `domain` alone (the
/// entry's owner, or whoever just created it); XenStore gives the nodes
/// made below it the same.
async fn seal(tx: &Transaction, base: &str, domain: Option<u32>) -> Result<(), ClientError> {
    let perms = tx.get_perms(base).await?;
    let owner = match domain {
        Some(d) => d,
        None => perms
            .first()
            .and_then(|p| p.get(1..)?.parse().ok())
            .ok_or_else(|| ClientError::BadReply(format!("permissions of {base}")))?,
    };
    let sealed = format!("r{owner}");
    if perms != [sealed.as_str()] {
        tx.set_perms(base, &[&sealed]).await?;
    }
    Ok(())
}

/// Claims `name` for `owner` (an entry with only its owner, which DNS does
/// not answer for yet); refused if someone else holds it. With `domain`,
/// the entry is that XenStore domain's to write (a jailed monitor's),
/// else its creator's.
pub async fn claim(
    client: &Client,
    name: &str,
    owner: &str,
    domain: Option<u32>,
) -> Result<(), RegistryError> {
    as_owner(client, name, owner, |tx, base| async move {
        tx.mkdir(&base).await?;
        seal(&tx, &base, domain).await?;
        tx.write(&format!("{base}/owner"), owner).await
    })
    .await
}

/// Writes the whole entry (creating it) in one transaction, if the name is
/// free or the service's owner's.
pub async fn publish(client: &Client, service: &Service) -> Result<(), RegistryError> {
    as_owner(client, &service.name, &service.owner, |tx, base| {
        let entries = service.entries();
        async move {
            tx.mkdir(&base).await?;
            seal(&tx, &base, None).await?;
            for (key, value) in entries {
                tx.write(&format!("{base}/{key}"), value).await?;
            }
            Ok(())
        }
    })
    .await
}

/// Writes what changed since `old`, in one transaction: a reader sees a
/// state together with the generation it belongs to. Refused if the name
/// has changed hands meanwhile.
pub async fn update(client: &Client, old: &Service, new: &Service) -> Result<(), RegistryError> {
    let changed: Vec<(&'static str, String)> = old
        .entries()
        .into_iter()
        .zip(new.entries())
        .filter(|(before, after)| before != after)
        .map(|(_, after)| after)
        .collect();
    if changed.is_empty() {
        return Ok(());
    }
    as_owner(client, &new.name, &new.owner, |tx, base| {
        let changed = changed.clone();
        async move {
            if owner_in(&tx, &base).await?.is_none() {
                // Removed under us: writing would recreate it half-empty.
                return Err(ClientError::Xs(XsError::NoEnt));
            }
            for (key, value) in changed {
                tx.write(&format!("{base}/{key}"), value).await?;
            }
            Ok(())
        }
    })
    .await
}

/// Removes `name` if `owner` holds it; another owner's entry stays (and is
/// reported as [`RegistryError::Taken`]); a missing one is no error.
pub async fn remove(client: &Client, name: &str, owner: &str) -> Result<(), RegistryError> {
    as_owner(client, name, owner, |tx, base| async move {
        match tx.rm(&base).await {
            Err(ClientError::Xs(XsError::NoEnt)) => Ok(()),
            done => done,
        }
    })
    .await
}

async fn read_opt(client: &Client, path: &str) -> Result<Option<String>, ClientError> {
    match client.read_string(path).await {
        Ok(v) => Ok(Some(v)),
        Err(ClientError::Xs(XsError::NoEnt)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads one service; `None` if it is not (or no longer) registered.
pub async fn read(client: &Client, name: &str) -> Result<Option<Service>, ClientError> {
    let base = service_path(name);
    let Some(state) = read_opt(client, &format!("{base}/state")).await? else {
        return Ok(None);
    };
    let text = |v: Option<String>| v.filter(|s| !s.is_empty());
    Ok(Some(Service {
        name: name.to_string(),
        ip: text(read_opt(client, &format!("{base}/ip")).await?).and_then(|s| s.parse().ok()),
        state,
        generation: text(read_opt(client, &format!("{base}/generation")).await?)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        owner: read_opt(client, &format!("{base}/owner"))
            .await?
            .unwrap_or_default(),
        boots: text(read_opt(client, &format!("{base}/stats/boots")).await?)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        last_boot_us: text(read_opt(client, &format!("{base}/stats/last_boot_us")).await?)
            .and_then(|s| s.parse().ok()),
        last_packet_ms: text(read_opt(client, &format!("{base}/stats/last_packet_ms")).await?)
            .and_then(|s| s.parse().ok()),
        held_frames: count(read_opt(client, &format!("{base}/stats/held_frames")).await?),
        dropped_frames: count(read_opt(client, &format!("{base}/stats/dropped_frames")).await?),
        refused_frames: count(read_opt(client, &format!("{base}/stats/refused_frames")).await?),
        hypervisor: read_opt(client, &format!("{base}/hypervisor"))
            .await?
            .unwrap_or_default(),
        domid: text(read_opt(client, &format!("{base}/domid")).await?).and_then(|s| s.parse().ok()),
    }))
}

fn count(value: Option<String>) -> u64 {
    value.and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Every registered service, by name.
pub async fn read_all(client: &Client) -> Result<Vec<Service>, ClientError> {
    let names = match client.directory(ROOT).await {
        Ok(names) => names,
        Err(ClientError::Xs(XsError::NoEnt)) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut services = Vec::new();
    for name in names {
        if let Some(s) = read(client, &name).await? {
            services.push(s);
        }
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(services)
}

/// Asks for a boot of a parked service: in one transaction, if its state is
/// `parked`, write its current generation to `boot`. The monitor boots once
/// per generation, however many ask; a request already made for this
/// generation is not written again. Returns whether this call wrote it.
pub async fn request_boot(client: &Client, name: &str) -> Result<bool, ClientError> {
    let base = service_path(name);
    client
        .transact(|tx| {
            let base = base.clone();
            async move {
                if tx.read(&format!("{base}/state")).await? != b"parked" {
                    return Ok(false);
                }
                let generation = tx.read(&format!("{base}/generation")).await?;
                let asked = match tx.read(&format!("{base}/boot")).await {
                    Ok(value) => value == generation,
                    Err(ClientError::Xs(XsError::NoEnt)) => false,
                    Err(e) => return Err(e),
                };
                if asked {
                    return Ok(false);
                }
                tx.write(&format!("{base}/boot"), generation).await?;
                Ok(true)
            }
        })
        .await
}

/// The generation a `boot` value asks for; `None` if it is not one.
pub fn parse_boot_request(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        assert!(valid_name("hello") && valid_name("web-1") && valid_name("a"));
        for bad in ["", "-a", "a-", "Hello", "a.b", "a_b", &"x".repeat(64)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
