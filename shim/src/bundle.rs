//! What a bundle's `config.json` tells the shim beyond the image: whether
//! the container is a Kubernetes pod sandbox, which pod it belongs to, the
//! network namespace it should live in, and its annotations.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use thiserror::Error;

/// containerd's CRI plugin marks a pod's containers with these.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The Kubernetes namespace of the pod (CRI sets it on every container).
pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";

/// A `config.json` larger than this is not containerd's.
const CONFIG_MAX: u64 = 4 << 20;

#[derive(Debug, Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {size} bytes, more than a runtime spec is ({CONFIG_MAX} at most)")]
    TooBig { path: PathBuf, size: u64 },
    #[error("not a runtime spec: {0}")]
    Spec(#[from] serde_json::Error),
    #[error("{CONTAINER_TYPE} {0:?} is unknown (sandbox or container)")]
    ContainerType(String),
    #[error("network namespace path {0:?} is not absolute")]
    NetnsNotAbsolute(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The pod sandbox: holds the pod's network namespace, runs no guest.
    Sandbox,
    /// A unikernel (in a pod or on its own).
    Unikernel,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleSpec {
    pub role: Role,
    /// The pod, for a container made through CRI.
    pub sandbox_id: Option<String>,
    /// The pod's Kubernetes namespace, for a container made through CRI.
    pub pod_namespace: Option<String>,
    /// `linux.namespaces[type=network].path`, if the container joins one.
    pub netns: Option<PathBuf>,
    /// `linux.cgroupsPath`: the container's cgroup.
    pub cgroups_path: Option<String>,
    pub annotations: BTreeMap<String, String>,
}

impl BundleSpec {
    pub fn read(bundle: &Path) -> Result<BundleSpec, BundleError> {
        use std::io::Read;
        let path = bundle.join("config.json");
        let read = |source| BundleError::Read {
            path: path.clone(),
            source,
        };
        let file = std::fs::File::open(&path).map_err(read)?;
        let size = file.metadata().map_err(read)?.len();
        if size > CONFIG_MAX {
            return Err(BundleError::TooBig { path, size });
        }
        let mut json = Vec::with_capacity(size as usize);
        file.take(CONFIG_MAX).read_to_end(&mut json).map_err(read)?;
        BundleSpec::parse(&json)
    }

    /// A runtime spec (oci-spec's types), as much of it as the shim needs.
    pub fn parse(json: &[u8]) -> Result<BundleSpec, BundleError> {
        let spec: Spec = serde_json::from_slice(json)?;
        let annotations: BTreeMap<String, String> = spec
            .annotations()
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let role = match annotations.get(CONTAINER_TYPE).map(String::as_str) {
            Some("sandbox") => Role::Sandbox,
            None | Some("container") => Role::Unikernel,
            Some(other) => return Err(BundleError::ContainerType(other.into())),
        };
        Ok(BundleSpec {
            role,
            sandbox_id: annotations.get(SANDBOX_ID).cloned(),
            pod_namespace: annotations.get(SANDBOX_NAMESPACE).cloned(),
            netns: network_namespace(&spec)?,
            cgroups_path: spec
                .linux()
                .as_ref()
                .and_then(|l| l.cgroups_path().as_ref())
                .map(|p| p.display().to_string()),
            annotations,
        })
    }
}

fn network_namespace(spec: &Spec) -> Result<Option<PathBuf>, BundleError> {
    let network = spec
        .linux()
        .as_ref()
        .and_then(|linux| linux.namespaces().as_ref())
        .and_then(|namespaces| {
            namespaces
                .iter()
                .find(|n| n.typ() == LinuxNamespaceType::Network)
        });
    match network.and_then(|n| n.path().as_ref()) {
        None => Ok(None),
        Some(path) if path.as_os_str().is_empty() => Ok(None),
        Some(path) if path.is_absolute() => Ok(Some(path.clone())),
        Some(path) => Err(BundleError::NetnsNotAbsolute(path.clone())),
    }
}

/// The shim a container belongs in: one for all the containers of a
/// containerd namespace. A shim does little for a container (its monitor
/// does the work), so one process per node and namespace instead of one per
/// task or pod is most of what a parked task costs saved; containerd's
/// `shim start` of a later container finds it and hands back its address.
/// The price is a wider blast radius: a shim that dies takes the monitors
/// of its namespace with it, as containerd then cleans up their tasks.
pub fn grouping() -> &'static str {
    "jitsu"
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_cri_sandbox_and_its_namespace() {
        let json = br#"{"annotations":{"io.kubernetes.cri.container-type":"sandbox",
            "io.kubernetes.cri.sandbox-id":"abc"},
            "linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/var/run/netns/cni-1"}]}}"#;
        let b = BundleSpec::parse(json).unwrap();
        assert_eq!(b.role, Role::Sandbox);
        assert_eq!(b.sandbox_id.as_deref(), Some("abc"));
        assert_eq!(b.netns, Some(PathBuf::from("/var/run/netns/cni-1")));
    }

    #[test]
    fn a_plain_container_has_no_pod() {
        let b = BundleSpec::parse(br#"{"linux":{"namespaces":[{"type":"network"}]}}"#).unwrap();
        assert_eq!(b.role, Role::Unikernel);
        assert_eq!(b.sandbox_id, None);
        assert_eq!(b.netns, None);
    }

    #[test]
    fn bad_specs_are_refused_with_a_reason() {
        for (json, why) in [
            (&br#"{"annotations":[]}"#[..], "expected a map"),
            (br#"{"annotations":{"a":1}}"#, "expected a string"),
            (
                br#"{"annotations":{"io.kubernetes.cri.container-type":"vm"}}"#,
                "unknown",
            ),
            (
                br#"{"linux":{"namespaces":[{"type":"network","path":"netns/x"}]}}"#,
                "not absolute",
            ),
            (
                br#"{"linux":{"namespaces":[{"type":"network-ish"}]}}"#,
                "unknown variant",
            ),
            (b"{", "not a runtime spec"),
        ] {
            let err = BundleSpec::parse(json).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = BundleSpec::parse(&bytes);
        }

        #[test]
        fn any_annotations_round_trip(map in proptest::collection::btree_map("[a-z./-]{1,20}", "\\PC{0,20}", 0..8)) {
            let json = serde_json::json!({ "annotations": map }).to_string();
            let parsed = BundleSpec::parse(json.as_bytes());
            if map.get(CONTAINER_TYPE).is_some_and(|t| t != "sandbox" && t != "container") {
                prop_assert!(parsed.is_err());
            } else {
                prop_assert_eq!(parsed.unwrap().annotations, map);
            }
        }
    }
}
