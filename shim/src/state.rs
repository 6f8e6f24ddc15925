//! What the shim keeps on disk for a container, so that a later `shim
//! delete` (after a shim was killed) can undo it, and where.
//!
//! A container is known by its containerd instance, namespace and id: `ctr
//! -n team-a run … web` and `ctr -n team-b run … web`, or k3s's containerd
//! beside the system's, are different containers. Their state lives under
//! `<state>/containers/<key>/`, where the key is a digest of the three
//! (short enough for a unix socket path, whatever the id's length). The
//! directory is created exclusively and its record names the container in
//! full, so two containers can never share one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::network::Network;
use crate::process::Process;

/// Where shim state lives: `$JITSU_STATE_DIR`, else `/run/jitsu`.
pub fn state_dir() -> PathBuf {
    std::env::var_os("JITSU_STATE_DIR").map_or_else(|| PathBuf::from("/run/jitsu"), PathBuf::from)
}

/// A container as containerd knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerKey {
    /// containerd's own address (one node may run several containerds).
    pub containerd: String,
    pub namespace: String,
    pub id: String,
}

impl ContainerKey {
    /// 128 bits of SHA-256 over the three, in hex.
    pub fn digest(&self) -> String {
        let mut hash = Sha256::new();
        for part in [&self.containerd, &self.namespace, &self.id] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        hex::encode(&hash.finalize()[..16])
    }

    pub fn dir(&self) -> PathBuf {
        state_dir().join("containers").join(self.digest())
    }

    /// The monitor's control socket.
    pub fn control_path(&self) -> PathBuf {
        self.dir().join("control.sock")
    }

    /// The empty directory the monitor's jail makes its root.
    pub fn jail_root(&self) -> PathBuf {
        self.dir().join("root")
    }

    /// How logs and leases name it.
    pub fn describe(&self) -> String {
        format!("{}/{} ({})", self.namespace, self.id, self.containerd)
    }
}

/// What must be undone for a container, kept in `<dir>/state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub key: ContainerKey,
    pub bundle: PathBuf,
    pub rootfs_mounted: bool,
    pub network: Network,
    /// The container's process (its monitor, or a sandbox's pause).
    pub process: Option<Process>,
    pub dns_name: Option<String>,
    /// The monitor's uid slot (see [`crate::identity`]), while leased.
    #[serde(default)]
    pub uid_slot: Option<u32>,
    /// The container's cgroup, once made.
    #[serde(default)]
    pub cgroup: Option<crate::cgroup::Cgroup>,
    /// The Xen domain's name, for a unikernel on Xen (destroyed at cleanup
    /// if its monitor could not do it).
    #[serde(default)]
    pub xen_domain: Option<String>,
    /// The unikernel's Conduit name and group (its socket and registration
    /// are removed at cleanup, if its monitor could not).
    #[serde(default)]
    pub conduit: Option<crate::conduit::ConduitName>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("container {0} exists already")]
    Exists(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Record {
    fn path(key: &ContainerKey) -> PathBuf {
        key.dir().join("state.json")
    }

    /// Makes the container's directory, which must not exist yet.
    pub fn claim(&self) -> Result<(), StateError> {
        let dir = self.key.dir();
        let io = |source| StateError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(dir.parent().expect("has a parent")).map_err(io)?;
        match std::fs::create_dir(&dir) {
            Ok(()) => self.save(),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(StateError::Exists(self.key.describe()))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Leases the monitor's uid and makes its jail's root (an empty
    /// directory), and saves the record that says so.
    pub fn prepare_jail(&mut self) -> Result<(), String> {
        let slot = crate::identity::lease(&self.key.describe())?;
        self.uid_slot = Some(slot);
        let root = self.key.jail_root();
        std::fs::create_dir(&root).map_err(|e| format!("{}: {e}", root.display()))?;
        self.save().map_err(|e| format!("saving state: {e}"))
    }

    /// Makes the container's cgroup (`cgroups_path`, else one of its own
    /// under `jitsu/`) with `memory_max`, and saves the record that says so.
    /// A host with no cgroup hierarchy gets none.
    pub fn make_cgroup(
        &mut self,
        cgroups_path: Option<&str>,
        memory_max: u64,
    ) -> Result<(), String> {
        let path = cgroups_path
            .map(str::to_string)
            .unwrap_or_else(|| format!("jitsu/{}", self.key.digest()));
        let Some(cgroup) = crate::cgroup::Cgroup::named(&path) else {
            if crate::cgroup::relative_path(&path).is_none() {
                return Err(format!("linux.cgroupsPath {path:?} is not a cgroup path"));
            }
            return Ok(());
        };
        self.cgroup = Some(cgroup.clone());
        self.save().map_err(|e| format!("saving state: {e}"))?;
        cgroup
            .create(memory_max)
            .map_err(|e| format!("the container's cgroup: {e}"))
    }

    /// Replaces the record atomically: a reader (a later `shim delete`)
    /// finds the old one or the new one, never a torn file.
    pub fn save(&self) -> Result<(), StateError> {
        let path = Record::path(&self.key);
        let json = serde_json::to_vec(self).map_err(std::io::Error::from);
        json.and_then(|json| write_atomically(&path, &json))
            .map_err(|source| StateError::Io { path, source })
    }

    /// The record of `key`, if one was saved and it is that container's.
    pub fn load(key: &ContainerKey) -> Option<Record> {
        let record: Record =
            serde_json::from_slice(&std::fs::read(Record::path(key)).ok()?).ok()?;
        (record.key == *key).then_some(record)
    }

    /// Undoes everything: the process, the TAP, the address, the rootfs
    /// mount, the registry entry and the state files. Safe to repeat. The
    /// state stays if the network could not be taken down, so that a later
    /// cleanup can try again.
    pub async fn clean_up(&self) {
        if let Some(process) = &self.process {
            if let Err(e) = process.signal(Signal::SIGKILL) {
                tracing::warn!(%e, pid = process.pid, "ending the container's process");
            }
        }
        // Before the network: a domain still there holds its address, so
        // the lease (and this record, for a later cleanup) stays with it.
        let domain = match &self.xen_domain {
            Some(domain) => crate::monitor::destroy_xen_domain(domain).await,
            None => Ok(()),
        };
        let network = match domain {
            Ok(()) => self.network.tear_down().await,
            Err(e) => Err(e),
        };
        if let Err(e) = &network {
            tracing::warn!(%e, "removing the network");
        }
        self.unmount_rootfs();
        if let Some(name) = &self.dns_name {
            remove_registry_entry(name, &self.key.describe()).await;
        }
        if let Some(conduit) = &self.conduit {
            let uid = self.uid_slot.map(jitsu_registry::identity::monitor_uid);
            crate::conduit::clean_up(&conduit.name, uid).await;
        }
        if let Some(slot) = self.uid_slot {
            crate::identity::release(slot);
        }
        if let Some(cgroup) = &self.cgroup {
            remove_cgroup(cgroup).await;
        }
        if network.is_ok() {
            remove_dir(&self.key.dir());
        }
    }

    pub fn unmount_rootfs(&self) {
        if self.rootfs_mounted {
            let _ = nix::mount::umount2(
                &self.bundle.join("rootfs"),
                nix::mount::MntFlags::MNT_DETACH,
            );
        }
    }
}

/// How long the shim waits for XenStore at create and cleanup.
const REGISTRY_DEADLINE: Duration = Duration::from_millis(500);

async fn registry_client() -> Option<jitsu_xenstore::Client> {
    let socket = jitsu_xenstore::server::default_socket_path();
    let connect = tokio::time::timeout(REGISTRY_DEADLINE, jitsu_xenstore::Client::connect(&socket));
    match connect.await {
        Ok(Ok(client)) => Some(client.with_deadline(REGISTRY_DEADLINE)),
        _ => None,
    }
}

/// Claims the container's DNS name for it before its monitor starts, so
/// that a name another container holds fails Create with the reason.
/// Without a XenStore daemon there is nothing to claim yet: the monitor
/// claims the name when one appears, and waits if it is taken.
pub async fn claim_registry_entry(
    name: &str,
    owner: &str,
    domain: Option<u32>,
) -> Result<(), String> {
    let Some(client) = registry_client().await else {
        return Ok(());
    };
    match jitsu_registry::claim(&client, name, owner, domain).await {
        Err(jitsu_registry::RegistryError::Taken { owner, .. }) => Err(format!(
            "the DNS name {name:?} belongs to {owner}; choose another (org.jitsu.dns-name)"
        )),
        Err(e) => {
            tracing::warn!(%e, name, "claiming the DNS name; the monitor will try again");
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

/// A monitor killed outright could not remove its own entry. Only the
/// container's own entry goes: a name someone else holds stays theirs.
async fn remove_registry_entry(name: &str, owner: &str) {
    let Some(client) = registry_client().await else {
        return;
    };
    let removed = tokio::time::timeout(
        REGISTRY_DEADLINE,
        jitsu_registry::remove(&client, name, owner),
    );
    if let Ok(Err(e)) = removed.await {
        tracing::debug!(%e, name, "removing the registry entry");
    }
}

/// Removes the cgroup once the killed process has left it (a SIGKILLed
/// process takes a moment to be gone), waiting at most a second.
async fn remove_cgroup(cgroup: &crate::cgroup::Cgroup) {
    for _ in 0..100 {
        if cgroup.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cgroup.remove();
}

/// Writes `bytes` beside `path` and renames the file into place.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension("new");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(%e, dir = %dir.display(), "removing the container's state");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(containerd: &str, namespace: &str, id: &str) -> ContainerKey {
        ContainerKey {
            containerd: containerd.into(),
            namespace: namespace.into(),
            id: id.into(),
        }
    }

    #[test]
    fn the_same_id_in_another_namespace_or_containerd_is_another_container() {
        let a = key("/run/containerd/containerd.sock", "team-a", "web");
        let b = key("/run/containerd/containerd.sock", "team-b", "web");
        let k3s = key("/run/k3s/containerd/containerd.sock", "team-a", "web");
        assert_ne!(a.dir(), b.dir());
        assert_ne!(a.dir(), k3s.dir());
        // The separator keeps parts from sliding into each other.
        assert_ne!(key("x", "ab", "c").digest(), key("x", "a", "bc").digest());
        assert_eq!(a.digest().len(), 32);
    }

    /// A reader racing a writer always finds a whole record, old or new.
    #[test]
    fn a_record_is_never_seen_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let short = serde_json::to_vec(&key("c", "ns", "a")).unwrap();
        let long = serde_json::to_vec(&key(&"c".repeat(4000), "ns", "b")).unwrap();
        write_atomically(&path, &short).unwrap();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for i in 0..2000 {
                    write_atomically(&path, if i % 2 == 0 { &long } else { &short }).unwrap();
                }
                done.store(true, std::sync::atomic::Ordering::Release);
            });
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) || reads == 0 {
                let bytes = std::fs::read(&path).unwrap();
                let parsed: Result<ContainerKey, _> = serde_json::from_slice(&bytes);
                assert!(
                    parsed.is_ok(),
                    "torn after {reads} reads: {} bytes",
                    bytes.len()
                );
                reads += 1;
            }
        });
    }

    #[test]
    fn a_socket_path_fits_whatever_the_id() {
        let long = key("/run/containerd/containerd.sock", "k8s.io", &"f".repeat(76));
        let path = long.control_path();
        // sun_path holds 108 bytes with its NUL.
        assert!(path.as_os_str().len() < 100, "{}", path.display());
    }
}
