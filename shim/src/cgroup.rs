//! The container's cgroup (`linux.cgroupsPath`): its monitor runs in it
//! from before its first instruction (the shim's child joins it before
//! exec), so the guest's memory and KVM's objects are charged to it and
//! capped by `memory.max`, and `ctr task metrics` and CRI's
//! ContainerStats read its memory, CPU and pids. Both hierarchies: cgroup
//! v1 (memory, cpuacct, pids, each mounted on its own) and the unified v2.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use containerd_shim::protos::cgroups::metrics as v1;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::MessageField;
use serde::{Deserialize, Serialize};

const ROOT: &str = "/sys/fs/cgroup";
/// The v1 controllers a monitor is put under.
const V1_CONTROLLERS: [&str; 3] = ["memory", "cpuacct", "pids"];

/// What a monitor costs beyond its guest's memory, with room to spare:
/// the monitor itself (about 3 MiB resident serving), KVM's objects and
/// page tables (about 0.4 MiB) and the tokio thread of the registry agent.
pub const MONITOR_OVERHEAD: u64 = 32 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Version {
    V1,
    V2,
}

/// A container's cgroup, by its path below each hierarchy's root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cgroup {
    pub version: Version,
    pub path: PathBuf,
}

impl Cgroup {
    /// The cgroup `cgroups_path` names (systemd's `slice:prefix:name` form
    /// too), on this host's hierarchy; `None` if the host has neither.
    pub fn named(cgroups_path: &str) -> Option<Cgroup> {
        let version = if Path::new(ROOT).join("cgroup.controllers").exists() {
            Version::V2
        } else if Path::new(ROOT).join("memory").is_dir() {
            Version::V1
        } else {
            return None;
        };
        Some(Cgroup {
            version,
            path: relative_path(cgroups_path)?,
        })
    }

    fn dirs(&self) -> Vec<PathBuf> {
        match self.version {
            Version::V2 => vec![Path::new(ROOT).join(&self.path)],
            Version::V1 => V1_CONTROLLERS
                .iter()
                .map(|c| Path::new(ROOT).join(c))
                .filter(|d| d.is_dir())
                .map(|d| d.join(&self.path))
                .collect(),
        }
    }

    fn memory_dir(&self) -> PathBuf {
        match self.version {
            Version::V2 => Path::new(ROOT).join(&self.path),
            Version::V1 => Path::new(ROOT).join("memory").join(&self.path),
        }
    }

    /// Makes the cgroup with a memory limit of `memory_max` bytes.
    pub fn create(&self, memory_max: u64) -> Result<(), String> {
        if self.version == Version::V2 {
            enable_v2_controllers(&self.path);
        }
        for dir in self.dirs() {
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let (file, value) = match self.version {
            Version::V2 => ("memory.max", memory_max.to_string()),
            Version::V1 => ("memory.limit_in_bytes", memory_max.to_string()),
        };
        let limit = self.memory_dir().join(file);
        std::fs::write(&limit, value).map_err(|e| format!("{}: {e}", limit.display()))
    }

    /// The `cgroup.procs` files a process writes `0` to, to join.
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs()
            .into_iter()
            .filter_map(|d| {
                CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes()).ok()
            })
            .collect()
    }

    /// Whether no process is left in it (or it is gone).
    pub fn is_empty(&self) -> bool {
        self.dirs().iter().all(|d| {
            std::fs::read_to_string(d.join("cgroup.procs")).map_or(true, |p| p.trim().is_empty())
        })
    }

    /// Removes the cgroup (once its processes are gone).
    pub fn remove(&self) {
        for dir in self.dirs() {
            if let Err(e) = std::fs::remove_dir(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(%e, dir = %dir.display(), "removing the cgroup");
                }
            }
        }
    }

    /// The metrics containerd expects from this hierarchy.
    pub fn metrics(&self) -> Result<Any, String> {
        let any = match self.version {
            Version::V1 => containerd_shim::util::convert_to_any(Box::new(self.v1_metrics())),
            Version::V2 => containerd_shim::util::convert_to_any(Box::new(self.v2_metrics())),
        };
        any.map_err(|e| format!("encoding the metrics: {e}"))
    }

    fn read(&self, controller: &str, file: &str) -> u64 {
        let dir = match self.version {
            Version::V2 => Path::new(ROOT).join(&self.path),
            Version::V1 => Path::new(ROOT).join(controller).join(&self.path),
        };
        read_number(&dir.join(file))
    }

    fn v1_metrics(&self) -> v1::Metrics {
        let stat = key_values(&self.memory_dir().join("memory.stat"));
        let get = |k: &str| stat.iter().find(|(key, _)| key == k).map_or(0, |(_, v)| *v);
        let memory = v1::MemoryStat {
            cache: get("cache"),
            rss: get("rss"),
            mapped_file: get("mapped_file"),
            usage: MessageField::some(v1::MemoryEntry {
                usage: self.read("memory", "memory.usage_in_bytes"),
                max: self.read("memory", "memory.max_usage_in_bytes"),
                limit: self.read("memory", "memory.limit_in_bytes"),
                failcnt: self.read("memory", "memory.failcnt"),
                ..Default::default()
            }),
            kernel: MessageField::some(v1::MemoryEntry {
                usage: self.read("memory", "memory.kmem.usage_in_bytes"),
                max: self.read("memory", "memory.kmem.max_usage_in_bytes"),
                limit: self.read("memory", "memory.kmem.limit_in_bytes"),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cpuacct = key_values(
            &Path::new(ROOT)
                .join("cpuacct")
                .join(&self.path)
                .join("cpuacct.stat"),
        );
        let ticks = |k: &str| {
            cpuacct
                .iter()
                .find(|(key, _)| key == k)
                .map_or(0, |(_, v)| *v)
        };
        // cpuacct.stat counts USER_HZ ticks (100 a second); usage is in ns.
        let cpu = v1::CPUStat {
            usage: MessageField::some(v1::CPUUsage {
                total: self.read("cpuacct", "cpuacct.usage"),
                user: ticks("user") * 10_000_000,
                kernel: ticks("system") * 10_000_000,
                ..Default::default()
            }),
            ..Default::default()
        };
        let pids = v1::PidsStat {
            current: self.read("pids", "pids.current"),
            limit: self.read("pids", "pids.max"),
            ..Default::default()
        };
        v1::Metrics {
            memory: MessageField::some(memory),
            cpu: MessageField::some(cpu),
            pids: MessageField::some(pids),
            ..Default::default()
        }
    }

    fn v2_metrics(&self) -> v2::Metrics {
        let dir = Path::new(ROOT).join(&self.path);
        let stat = key_values(&dir.join("memory.stat"));
        let get = |k: &str| stat.iter().find(|(key, _)| key == k).map_or(0, |(_, v)| *v);
        let memory = v2::MemoryStat {
            anon: get("anon"),
            file: get("file"),
            kernel_stack: get("kernel_stack"),
            slab: get("slab"),
            sock: get("sock"),
            shmem: get("shmem"),
            file_mapped: get("file_mapped"),
            usage: read_number(&dir.join("memory.current")),
            usage_limit: read_number(&dir.join("memory.max")),
            max_usage: read_number(&dir.join("memory.peak")),
            ..Default::default()
        };
        let cpu_stat = key_values(&dir.join("cpu.stat"));
        let cpu = |k: &str| {
            cpu_stat
                .iter()
                .find(|(key, _)| key == k)
                .map_or(0, |(_, v)| *v)
        };
        v2::Metrics {
            memory: MessageField::some(memory),
            cpu: MessageField::some(v2::CPUStat {
                usage_usec: cpu("usage_usec"),
                user_usec: cpu("user_usec"),
                system_usec: cpu("system_usec"),
                ..Default::default()
            }),
            pids: MessageField::some(v2::PidsStat {
                current: read_number(&dir.join("pids.current")),
                limit: read_number(&dir.join("pids.max")),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// `cgroups_path` as a path below a hierarchy's root: `/a/b` → `a/b`;
/// systemd's `system.slice:cri-containerd:ID` → `system.slice/cri-containerd-ID.scope`.
/// `None` for one that climbs (`..`) or names nothing.
pub fn relative_path(cgroups_path: &str) -> Option<PathBuf> {
    let path = match cgroups_path.split(':').collect::<Vec<_>>()[..] {
        [slice, prefix, name] if !cgroups_path.starts_with('/') => {
            let slice = if slice.is_empty() {
                "system.slice"
            } else {
                slice
            };
            format!("{slice}/{prefix}-{name}.scope")
        }
        _ => cgroups_path.to_string(),
    };
    let mut out = PathBuf::new();
    for part in Path::new(&path).components() {
        match part {
            std::path::Component::Normal(p) => out.push(p),
            std::path::Component::RootDir | std::path::Component::CurDir => {}
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// v2 needs the memory, cpu and pids controllers enabled in every
/// ancestor's `cgroup.subtree_control` (best effort: a host that keeps one
/// off keeps it off).
fn enable_v2_controllers(path: &Path) {
    let mut dir = PathBuf::from(ROOT);
    for part in path.parent().into_iter().flat_map(|p| p.components()) {
        let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu +pids");
        dir.push(part);
        let _ = std::fs::create_dir(&dir);
    }
    let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu +pids");
}

fn read_number(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn key_values(path: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_below_the_root() {
        assert_eq!(relative_path("/default/h1"), Some("default/h1".into()));
        assert_eq!(relative_path("k8s.io/abc"), Some("k8s.io/abc".into()));
        assert_eq!(
            relative_path("kubepods.slice:cri-containerd:abc"),
            Some("kubepods.slice/cri-containerd-abc.scope".into())
        );
        assert_eq!(relative_path("/default/../../etc"), None);
        assert_eq!(relative_path("/"), None);
        assert_eq!(relative_path(""), None);
    }
}
