//! What a bundle's `config.json` tells the shim beyond the image: whether
//! the container is a Kubernetes pod sandbox, which pod it belongs to, the
//! network namespace it should live in, and its annotations.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// containerd's CRI plugin marks a pod's containers with these.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

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
    /// `linux.namespaces[type=network].path`, if the container joins one.
    pub netns: Option<PathBuf>,
    pub annotations: BTreeMap<String, String>,
}

impl BundleSpec {
    pub fn read(bundle: &Path) -> Result<BundleSpec, String> {
        let path = bundle.join("config.json");
        let json = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        BundleSpec::parse(&json).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(json: &[u8]) -> Result<BundleSpec, String> {
        let config: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
        let annotations = match &config["annotations"] {
            serde_json::Value::Null => BTreeMap::new(),
            serde_json::Value::Object(map) => map
                .iter()
                .map(|(k, v)| match v.as_str() {
                    Some(v) => Ok((k.clone(), v.to_string())),
                    None => Err(format!("annotation {k:?} is not a string")),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err("annotations is not an object".into()),
        };
        let role = match annotations.get(CONTAINER_TYPE).map(String::as_str) {
            Some("sandbox") => Role::Sandbox,
            None | Some("container") => Role::Unikernel,
            Some(other) => return Err(format!("{CONTAINER_TYPE} {other:?} is unknown")),
        };
        Ok(BundleSpec {
            role,
            sandbox_id: annotations.get(SANDBOX_ID).cloned(),
            netns: network_namespace(&config)?,
            annotations,
        })
    }
}

fn network_namespace(config: &serde_json::Value) -> Result<Option<PathBuf>, String> {
    let Some(namespaces) = config["linux"]["namespaces"].as_array() else {
        return Ok(None);
    };
    let Some(network) = namespaces.iter().find(|n| n["type"] == "network") else {
        return Ok(None);
    };
    match network["path"].as_str() {
        None | Some("") => Ok(None),
        Some(path) if Path::new(path).is_absolute() => Ok(Some(PathBuf::from(path))),
        Some(path) => Err(format!("network namespace path {path:?} is not absolute")),
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
            (&br#"{"annotations":[]}"#[..], "not an object"),
            (br#"{"annotations":{"a":1}}"#, "not a string"),
            (
                br#"{"annotations":{"io.kubernetes.cri.container-type":"vm"}}"#,
                "unknown",
            ),
            (
                br#"{"linux":{"namespaces":[{"type":"network","path":"netns/x"}]}}"#,
                "not absolute",
            ),
            (b"{", "not JSON"),
        ] {
            let err = BundleSpec::parse(json).unwrap_err();
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
