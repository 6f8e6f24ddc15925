//! Through CRI, as the kubelet starts a pod: RunPodSandbox, CreateContainer,
//! StartContainer, then the first HTTP byte from the pod's address; jitsu
//! pods of the lazy hello unikernel against runc pods of a static native
//! server, both on the same CNI bridge. And a parked pod's cold request.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use jitsu_e2e::cri::{CriNode, K8S_NAMESPACE};
use jitsu_e2e::lazy::try_request;

use crate::containerd::{first_byte, native_image, NATIVE_IMAGE};
use crate::stats::{Row, Samples, Unit};

const HELLO: &str = "docker.io/jitsu/hello:bench";

/// A running pod of `image` on `handler`: its id, container id and address.
fn start_pod(
    node: &mut CriNode,
    name: &str,
    handler: &str,
    image: &str,
) -> Result<(String, String, Ipv4Addr)> {
    let sandbox = CriNode::pod_config(name, &[]);
    let pod = node
        .run_pod(&sandbox, handler)
        .map_err(|e| anyhow!("RunPodSandbox: {e}"))?;
    let container = node
        .create_container(&pod, &sandbox, name, image, &[])
        .map_err(|e| anyhow!("CreateContainer: {e}"))?;
    node.start_container(&container)
        .map_err(|e| anyhow!("StartContainer: {e}"))?;
    let ip = node.pod_ip(&pod).parse().context("the pod's address")?;
    Ok((pod, container, ip))
}

/// RunPodSandbox to the first byte from the pod, `n` pods one after another.
fn pod_to_first_byte(
    node: &mut CriNode,
    handler: &str,
    image: &str,
    port: u16,
    n: usize,
) -> Result<Samples> {
    let mut samples = Samples::new();
    for i in 0..n {
        let t = Instant::now();
        let (pod, _, ip) = start_pod(node, &format!("{handler}-{i}"), handler, image)?;
        let addr = SocketAddr::from((ip, port));
        node.ns()
            .run_in(|| first_byte(addr, Instant::now() + Duration::from_secs(10)))?;
        samples.push(t.elapsed());
        node.remove_pod(&pod)
            .map_err(|e| anyhow!("removing the pod: {e}"))?;
    }
    Ok(samples)
}

pub fn rows(quick: bool) -> Result<Vec<Row>> {
    let n = if quick { 3 } else { 15 };
    let mut node = CriNode::start();
    node.containerd
        .import_hello_in(K8S_NAMESPACE, HELLO, &["--idle-timeout", "5m"]);
    let archive = node.containerd.dir.path().join("native.tar");
    std::fs::write(&archive, native_image()?)?;
    node.containerd.import(K8S_NAMESPACE, &archive);
    node.wait_for_image(HELLO);
    node.wait_for_image(NATIVE_IMAGE);

    let jitsu = pod_to_first_byte(&mut node, "jitsu", HELLO, 80, n)?;
    let runc = pod_to_first_byte(&mut node, "runc", NATIVE_IMAGE, 8080, n)?;

    // A parked pod's cold request: re-park with `stop` before each.
    let (pod, container, ip) = start_pod(&mut node, "parked", "jitsu", HELLO)?;
    let control = node.containerd.control(&container);
    let addr = SocketAddr::from((ip, 80));
    let mut cold = Samples::new();
    for _ in 0..n * 4 {
        let reply = try_request(&control, "stop")?;
        ensure!(reply.contains("\"parked\""), "{reply}");
        let t = Instant::now();
        node.ns()
            .run_in(|| first_byte(addr, Instant::now() + Duration::from_secs(10)))?;
        cold.push(t.elapsed());
    }
    node.remove_pod(&pod)
        .map_err(|e| anyhow!("removing the pod: {e}"))?;
    Ok(vec![
        Row {
            name: "CRI RunPodSandbox to first HTTP byte: jitsu pod (lazy)".into(),
            samples: jitsu,
            baseline_name: "runc pod, static native server".into(),
            baseline: runc.clone(),
            unit: Unit::Time,
        },
        Row {
            name: "parked jitsu pod: cold connect to first byte".into(),
            samples: cold,
            baseline_name: "runc pod: RunPodSandbox to first byte".into(),
            baseline: runc,
            unit: Unit::Time,
        },
    ])
}
