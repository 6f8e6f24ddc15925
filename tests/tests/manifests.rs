//! Every manifest in k8s-manifests/ is a valid object of its Kubernetes
//! kind: it deserializes into the k8s-openapi type, and serializing that
//! back loses nothing (a field the type does not know would be lost, which
//! is how unknown or misplaced fields are caught).

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::api::node::v1::RuntimeClass;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

fn manifests() -> Vec<(String, serde_json::Value)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../k8s-manifests");
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("k8s-manifests/") {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}#{i}: {e}", path.display()));
            let json = serde_json::to_value(&value).unwrap();
            docs.push((
                format!("{}#{i}", path.file_name().unwrap().to_string_lossy()),
                json,
            ));
        }
    }
    assert!(
        docs.len() >= 6,
        "expected the RuntimeClass, installer, app and CoreDNS objects, found {}",
        docs.len()
    );
    docs
}

fn round_trips<T: DeserializeOwned + Serialize>(name: &str, json: &serde_json::Value) {
    let typed: T = serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &back, json,
        "{name}: fields the Kubernetes type does not know were dropped"
    );
}

#[test]
fn every_manifest_is_a_valid_kubernetes_object() {
    for (name, json) in manifests() {
        match json["kind"].as_str() {
            Some("RuntimeClass") => round_trips::<RuntimeClass>(&name, &json),
            Some("DaemonSet") => round_trips::<DaemonSet>(&name, &json),
            Some("Deployment") => round_trips::<Deployment>(&name, &json),
            Some("Service") => round_trips::<Service>(&name, &json),
            Some("ConfigMap") => round_trips::<ConfigMap>(&name, &json),
            Some("Namespace") => round_trips::<Namespace>(&name, &json),
            other => panic!("{name}: no check for kind {other:?}"),
        }
    }
}

#[test]
fn the_runtime_class_and_the_app_agree() {
    let docs = manifests();
    let find = |kind: &str| {
        docs.iter()
            .find(|(_, j)| j["kind"] == kind)
            .map(|(_, j)| j.clone())
            .unwrap()
    };
    let rc: RuntimeClass = serde_json::from_value(find("RuntimeClass")).unwrap();
    assert_eq!(rc.handler, "jitsu", "containerd's CRI runtime name");
    let app: Deployment = serde_json::from_value(find("Deployment")).unwrap();
    let pod = app.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.runtime_class_name.as_deref(),
        Some(rc.metadata.name.as_deref().unwrap())
    );
}

#[test]
fn a_misspelt_field_is_caught() {
    let json = serde_json::json!({
        "apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass",
        "metadata": {"name": "jitsu"}, "handler": "jitsu", "overheads": {"podFixed": {"cpu": "1m"}}
    });
    let caught = std::panic::catch_unwind(|| round_trips::<RuntimeClass>("typo", &json));
    assert!(caught.is_err(), "an unknown field must not pass");
}
