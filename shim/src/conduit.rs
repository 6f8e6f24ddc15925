//! A container's Conduit name: the group its monitor is told (the pod's
//! Kubernetes namespace, or the containerd namespace of a `ctr run`), the
//! node's socket directory, and what is left to remove after a monitor
//! that was killed.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::state::state_dir;

/// A container's Conduit identity, as its record keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConduitName {
    pub name: String,
    pub group: String,
}

/// The node's directory of Conduit sockets (beside the shim's state, so
/// that each containerd's shims, in tests each private node, have theirs).
pub fn socket_dir() -> PathBuf {
    state_dir().join("conduit")
}

/// The group of a container: its pod's Kubernetes namespace (a DNS label
/// already), else its containerd namespace made into one (containerd
/// allows `A-Z`, `_` and `.` too: lower-cased, the rest as `-`).
pub fn group_of(pod_namespace: Option<&str>, containerd_namespace: &str) -> String {
    if let Some(ns) = pod_namespace.filter(|ns| jitsu_registry::valid_name(ns)) {
        return ns.to_string();
    }
    let mapped: String = containerd_namespace
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .take(63)
        .collect();
    let trimmed = mapped.trim_matches('-');
    if trimmed.is_empty() {
        "default".into()
    } else {
        trimmed.into()
    }
}

/// Removes what a monitor running as `uid` left of `name`: its socket and
/// group link (not another's, should the name have passed on), and its
/// registration in XenStore (only if it is still its domain's).
pub async fn clean_up(name: &str, uid: Option<u32>) {
    let dir = jitsu_conduit::Dir::new(socket_dir());
    let ours = dir
        .anchored(name)
        .is_some_and(|a| uid.is_none_or(|u| a.uid == u));
    if ours {
        dir.remove(name);
    }
    let Some(domid) = uid.and_then(jitsu_registry::identity::domid_of_uid) else {
        return;
    };
    let socket = jitsu_xenstore::server::default_socket_path();
    let removed = tokio::time::timeout(std::time::Duration::from_millis(500), async {
        let client = jitsu_xenstore::Client::connect(&socket).await?;
        jitsu_conduit::rendezvous::unregister(&client, name, domid).await
    });
    if let Ok(Err(e)) = removed.await {
        tracing::debug!(%e, name, "removing the Conduit registration");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_the_pods_namespace_or_the_containerd_namespace_as_a_label() {
        assert_eq!(group_of(Some("team-a"), "k8s.io"), "team-a");
        assert_eq!(group_of(None, "default"), "default");
        assert_eq!(group_of(None, "k8s.io"), "k8s-io");
        assert_eq!(group_of(None, "Team_B"), "team-b");
        assert_eq!(group_of(None, "__"), "default");
        assert_eq!(group_of(Some("Not_A_Label"), "ns"), "ns");
        let long = "x".repeat(100);
        assert_eq!(group_of(None, &long).len(), 63);
        for ns in ["default", "k8s.io", "Team_B", "a..b", &long] {
            assert!(jitsu_registry::valid_name(&group_of(None, ns)), "{ns}");
        }
    }
}
