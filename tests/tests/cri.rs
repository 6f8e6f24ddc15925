//! The kubelet's path: containerd's CRI plugin with the runtime handler
//! `jitsu`, a CNI bridge network and our shim. Pods whose unikernel sleeps
//! until traffic comes, on the pod's own address.

use std::path::PathBuf;
use std::time::Duration;

use jitsu_e2e::cri::{CriNode, K8S_NAMESPACE};
use jitsu_e2e::process::run_with_timeout;
use jitsu_e2e::wait_until;
use k8s_cri::v1::ContainerState;

const HELLO: &str = "docker.io/jitsu/hello:cri";

fn node_with_hello() -> CriNode {
    let mut node = CriNode::start();
    // No DNS name: pods are found through their Service, not our zone.
    node.containerd
        .import_hello_in(K8S_NAMESPACE, HELLO, &["--idle-timeout", "30s"]);
    node.wait_for_image(HELLO);
    node
}

/// A pod named `name` running hello-http with `annotations`, started:
/// its pod id and container id.
fn hello_pod(node: &mut CriNode, name: &str, annotations: &[(&str, &str)]) -> (String, String) {
    let sandbox = CriNode::pod_config(name, &[]);
    let pod = node.run_pod(&sandbox, "jitsu").expect("RunPodSandbox");
    let container = node
        .create_container(&pod, &sandbox, "hello", HELLO, annotations)
        .expect("CreateContainer");
    node.start_container(&container).expect("StartContainer");
    (pod, container)
}

/// The `status` of the container's monitor, from its control socket.
fn monitor_state(node: &CriNode, container: &str) -> String {
    let status = node.containerd.monitor_status(container);
    status["state"].as_str().unwrap_or_default().to_string()
}

fn wait_for_monitor_state(node: &CriNode, container: &str, state: &str) {
    wait_until(&format!("the VM to be {state}"), || {
        monitor_state(node, container) == state
    });
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) && !cmdline.contains("cargo") {
                found.push(cmdline);
            }
        }
    }
    found
}

/// The pod's network namespace, as the shim recorded it for the sandbox.
fn pod_netns(node: &CriNode, pod: &str) -> PathBuf {
    let (_, record) = node
        .containerd
        .record("k8s.io", pod)
        .expect("the sandbox's record");
    PathBuf::from(
        record["network"]["Sandbox"]["netns"]
            .as_str()
            .expect("the sandbox has a network namespace"),
    )
}

#[test]
fn a_pod_sleeps_until_its_first_request_and_leaves_nothing_behind() {
    let mut node = node_with_hello();
    let (pod, container) = hello_pod(&mut node, "hello", &[("org.jitsu.idle-timeout", "1s")]);
    let netns = pod_netns(&node, &pod);
    assert_eq!(
        node.container_state(&container).0,
        ContainerState::ContainerRunning
    );
    assert_eq!(
        monitor_state(&node, &container),
        "parked",
        "no guest before traffic"
    );
    let socket = node.containerd.socket.display().to_string();
    let shims: Vec<String> = processes_mentioning(&socket)
        .into_iter()
        .filter(|p| p.contains("containerd-shim-jitsu-v1"))
        .collect();
    assert_eq!(
        shims.len(),
        1,
        "one shim for the pod's two containers: {shims:?}"
    );

    let url = format!("http://{}/", node.pod_ip(&pod));
    assert_eq!(
        node.ns().curl_status(&url),
        "200",
        "the first request boots it"
    );
    assert_eq!(monitor_state(&node, &container), "running");

    wait_for_monitor_state(&node, &container, "parked");
    assert_eq!(
        node.container_state(&container).0,
        ContainerState::ContainerRunning,
        "a parked VM is still a running container"
    );
    assert_eq!(node.ns().curl_status(&url), "200", "booted again");

    node.remove_pod(&pod)
        .expect("StopPodSandbox, RemovePodSandbox");
    assert!(node.pods().is_empty());
    assert!(!netns.exists(), "{} is left", netns.display());
    let links = node.containerd.links();
    assert!(
        !links
            .iter()
            .any(|l| l.starts_with("jt") || l.starts_with("veth")),
        "{links:?}"
    );
    let state = node.containerd.state.display().to_string();
    assert_eq!(processes_mentioning(&state), Vec::<String>::new());
    assert_eq!(
        processes_mentioning(&netns.display().to_string()),
        Vec::<String>::new()
    );
    assert_eq!(node.containerd.leftovers(), Vec::<PathBuf>::new());
}

#[test]
fn a_pod_of_a_bad_image_says_why_it_cannot_start() {
    let mut node = node_with_hello();
    let sandbox = CriNode::pod_config("bad", &[]);
    let pod = node.run_pod(&sandbox, "jitsu").expect("RunPodSandbox");
    // The pause image is a fine container image but no unikernel.
    let container = node
        .create_container(&pod, &sandbox, "bad", jitsu_e2e::cri::PAUSE_IMAGE, &[])
        .expect("CRI creates containers without asking the runtime");
    let err = node.start_container(&container).unwrap_err();
    assert!(
        err.message().contains("not a usable unikernel image"),
        "{err:?}"
    );
    let (state, reason) = node.container_state(&container);
    assert_eq!(state, ContainerState::ContainerExited);
    assert!(reason.contains("jitsu.json"), "{reason}");

    // And a bad annotation, with the key named.
    let container = node
        .create_container(&pod, &sandbox, "worse", HELLO, &[("org.jitsu.mem", "lots")])
        .unwrap();
    let err = node.start_container(&container).unwrap_err();
    assert!(err.message().contains("org.jitsu.mem"), "{err:?}");

    // The pod's address goes to one unikernel; a second is refused, and
    // the first keeps serving.
    for (name, expect_ok) in [("first", true), ("second", false)] {
        let container = node
            .create_container(&pod, &sandbox, name, HELLO, &[])
            .unwrap();
        match node.start_container(&container) {
            Ok(()) => assert!(expect_ok, "{name} started"),
            Err(err) => {
                assert!(!expect_ok, "{name}: {err:?}");
                assert!(err.message().contains("one unikernel"), "{err:?}");
            }
        }
    }
    let url = format!("http://{}/", node.pod_ip(&pod));
    assert_eq!(
        node.ns().curl_status(&url),
        "200",
        "the first still has the pod's network"
    );
    node.remove_pod(&pod).unwrap();
    assert_eq!(node.containerd.leftovers(), Vec::<PathBuf>::new());
}

#[test]
fn a_pod_is_in_the_node_zone_only_when_it_asks() {
    let mut node = CriNode::start();
    let _daemon = node.containerd.start_daemon();
    // The image names itself `hello`, as the example image does.
    let image = "docker.io/jitsu/hello:named";
    node.containerd
        .import_hello_in(K8S_NAMESPACE, image, &["--dns-name", "hello"]);
    node.wait_for_image(image);
    let mut pods = Vec::new();
    for (name, annotations) in [
        ("quiet", &[][..]),
        ("named", &[("org.jitsu.dns-name", "web")][..]),
    ] {
        let sandbox = CriNode::pod_config(name, annotations);
        let pod = node.run_pod(&sandbox, "jitsu").unwrap();
        let c = node
            .create_container(&pod, &sandbox, name, image, &[])
            .unwrap();
        node.start_container(&c).unwrap();
        pods.push(pod);
    }
    wait_until("the registration", || {
        node.containerd.ps()[0]["state"] == "parked"
    });
    let ps = node.containerd.ps();
    let names: Vec<&str> = ps
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["web"], "the image's own name is not the pod's");
    let web_ip = node.pod_ip(&pods[1]);
    let mut dig = node.ns().command("dig");
    dig.args(["@127.0.0.1", "+short", "web.jitsu.internal"]);
    let answer = run_with_timeout(&mut dig, Duration::from_secs(10));
    assert_eq!(String::from_utf8_lossy(&answer.stdout).trim(), web_ip);
    wait_until("the lookup's boot", || {
        node.containerd.ps()[0]["state"] == "running"
    });
    for pod in pods {
        node.remove_pod(&pod).unwrap();
    }
    assert_eq!(node.containerd.ps(), serde_json::json!([]));
}

/// A CRI pod on any timeline: parked for any time (1 s idle timeout), its
/// first connection is answered with one SYN, and each one boots it once.
#[test]
fn a_pod_parked_for_any_time_answers_its_first_syn() {
    const IDLE: Duration = Duration::from_secs(1);
    let mut node = node_with_hello();
    let (pod, container) = hello_pod(&mut node, "timeline", &[("org.jitsu.idle-timeout", "1s")]);
    let ip: std::net::Ipv4Addr = node.pod_ip(&pod).parse().unwrap();
    let addr = std::net::SocketAddr::from((ip, 80));
    for (n, factor) in (1u64..).zip(jitsu_e2e::http::PARKINGS) {
        if n > 1 {
            wait_until("re-parked", || {
                let s = node.containerd.monitor_status(&container);
                s["state"] == "parked" && s["boots"] == n - 1
            });
        }
        std::thread::sleep(IDLE.mul_f64(factor));
        let (reply, retrans) = node.ns().run_in(move || jitsu_e2e::http::get(addr));
        assert!(
            reply.starts_with("HTTP/1.1 200"),
            "parked {factor}x: {reply}"
        );
        assert_eq!(retrans, 0, "parked {factor}x: one SYN");
        assert_eq!(
            node.containerd.monitor_status(&container)["boots"],
            n,
            "parked {factor}x: one boot"
        );
    }
    node.remove_pod(&pod)
        .expect("StopPodSandbox, RemovePodSandbox");
    assert_eq!(node.containerd.leftovers(), Vec::<PathBuf>::new());
}

/// containerd restarted under a pod whose unikernel runs: CRI still knows
/// the pod and its running container, the guest keeps serving, and removing
/// the pod through the new containerd leaves nothing.
#[test]
fn a_pod_survives_a_containerd_restart() {
    let mut node = node_with_hello();
    let (pod, container) = hello_pod(&mut node, "restart", &[]);
    let url = format!("http://{}/", node.pod_ip(&pod));
    assert_eq!(node.ns().curl_status(&url), "200");
    node.containerd.restart();
    wait_until("CRI to answer again", || {
        node.try_container_state(&container)
            .is_ok_and(|(state, _)| state == ContainerState::ContainerRunning)
    });
    assert_eq!(monitor_state(&node, &container), "running");
    assert_eq!(node.ns().curl_status(&url), "200");
    node.remove_pod(&pod)
        .expect("StopPodSandbox, RemovePodSandbox");
    assert!(node.pods().is_empty());
    assert_eq!(node.containerd.leftovers(), Vec::<PathBuf>::new());
}

/// A pod's unikernel that ends by itself gives the pod's network back (CRI
/// deletes the ended task, and with it our network): the kubelet's next
/// container in the same pod, a restart, takes eth0 over.
#[test]
fn a_pods_next_unikernel_takes_over_from_one_that_ended() {
    let mut node = node_with_hello();
    const EXITS: &str = "docker.io/jitsu/exits:cri";
    node.containerd.import_guest_in(
        K8S_NAMESPACE,
        "abi-test",
        EXITS,
        &["--cmdline", "exit 3", "--boot", "eager"],
    );
    node.wait_for_image(EXITS);
    let sandbox = CriNode::pod_config("restarts", &[]);
    let pod = node.run_pod(&sandbox, "jitsu").expect("RunPodSandbox");
    let first = node
        .create_container(&pod, &sandbox, "first", EXITS, &[])
        .expect("CreateContainer");
    node.start_container(&first).expect("StartContainer");
    wait_until("the first unikernel to exit", || {
        node.container_state(&first).0 == ContainerState::ContainerExited
    });
    let next = node
        .create_container(&pod, &sandbox, "next", HELLO, &[])
        .expect("the next container gets the pod's network");
    node.start_container(&next).expect("StartContainer");
    let url = format!("http://{}/", node.pod_ip(&pod));
    assert_eq!(node.ns().curl_status(&url), "200");
    node.remove_pod(&pod)
        .expect("StopPodSandbox, RemovePodSandbox");
    assert_eq!(node.containerd.leftovers(), Vec::<PathBuf>::new());
}

/// A DNS name belongs to the pod that took it first: a second pod asking
/// for it is refused with the reason, and deleting the second leaves the
/// first's name resolving.
#[test]
fn a_dns_name_belongs_to_the_first_pod_that_asks() {
    let mut node = node_with_hello();
    let _daemon = node.containerd.start_daemon();
    let web = [("org.jitsu.dns-name", "web")];
    let first_sandbox = CriNode::pod_config("first", &web);
    let first = node.run_pod(&first_sandbox, "jitsu").unwrap();
    let c = node
        .create_container(&first, &first_sandbox, "first", HELLO, &[])
        .unwrap();
    node.start_container(&c).unwrap();
    wait_until("the registration", || {
        node.containerd.ps()[0]["state"] == "parked"
    });
    let first_ip = node.pod_ip(&first);
    let dig = |node: &CriNode| {
        let mut dig = node.ns().command("dig");
        dig.args(["@127.0.0.1", "+short", "web.jitsu.internal"]);
        let answer = run_with_timeout(&mut dig, Duration::from_secs(10));
        String::from_utf8_lossy(&answer.stdout).trim().to_string()
    };
    assert_eq!(dig(&node), first_ip);

    let second_sandbox = CriNode::pod_config("second", &web);
    let second = node.run_pod(&second_sandbox, "jitsu").unwrap();
    let c2 = node
        .create_container(&second, &second_sandbox, "second", HELLO, &[])
        .unwrap();
    let err = node.start_container(&c2).unwrap_err();
    assert!(
        err.message()
            .contains("the DNS name \"web\" belongs to k8s.io/"),
        "{err:?}"
    );
    assert!(err.message().contains(&c), "names the owner: {err:?}");
    assert_eq!(dig(&node), first_ip, "the first keeps its name");

    node.remove_pod(&second).unwrap();
    assert_eq!(dig(&node), first_ip, "deleting the second left it alone");
    let ps = node.containerd.ps();
    assert_eq!(ps.as_array().unwrap().len(), 1, "{ps}");
    assert!(ps[0]["owner"].as_str().unwrap().contains(&c), "{ps}");
    assert_eq!(node.ns().curl_status(&format!("http://{first_ip}/")), "200");
    node.remove_pod(&first).unwrap();
    assert_eq!(node.containerd.ps(), serde_json::json!([]));
    assert_eq!(node.containerd.leftovers(), Vec::<PathBuf>::new());
}

/// A pod's unikernel monitor is jailed as a task's is (see the containerd
/// test), in the pod's network.
#[test]
fn a_pods_monitor_runs_jailed() {
    let mut node = node_with_hello();
    let (pod, container) = hello_pod(&mut node, "jailed", &[]);
    let (_, record) = node
        .containerd
        .record("k8s.io", &container)
        .expect("the container's record");
    let pid = record["process"]["pid"].as_i64().expect("a monitor") as i32;
    jitsu_e2e::jail::assert_jailed(pid);
    let url = format!("http://{}/", node.pod_ip(&pod));
    assert_eq!(node.ns().curl_status(&url), "200");
    node.remove_pod(&pod).unwrap();
    assert_eq!(node.containerd.leftovers(), Vec::<PathBuf>::new());
}

/// The kubelet's ContainerStats of a pod's unikernel: the memory and CPU
/// of its monitor's cgroup, with the booted guest in them.
#[test]
fn container_stats_show_the_unikernels_memory_and_cpu() {
    let mut node = node_with_hello();
    let (pod, container) = hello_pod(&mut node, "stats", &[]);
    let url = format!("http://{}/", node.pod_ip(&pod));
    assert_eq!(node.ns().curl_status(&url), "200");
    let (memory, cpu) = node.container_stats(&container);
    assert!(memory > 100 << 10, "working set {memory}");
    assert!(cpu > 0, "cpu {cpu}");
    node.remove_pod(&pod).unwrap();
    assert_eq!(node.containerd.leftovers(), Vec::<PathBuf>::new());
}

/// Pods talk over Conduit: hello-http pods ask a counter pod for each
/// page's visit number, by its name. Pods of the counter's Kubernetes
/// namespace may, and pods its allow-list names; another namespace's pod
/// is refused, and its page says so. Removing the pods leaves nothing.
#[test]
fn pods_talk_over_conduit_within_their_namespace_or_by_allow_list() {
    const COUNTER: &str = "docker.io/jitsu/counter:cri";
    let mut node = node_with_hello();
    let _daemon = node.containerd.start_daemon();
    node.containerd
        .import_guest_in(K8S_NAMESPACE, "counter", COUNTER, &[]);
    node.wait_for_image(COUNTER);
    let mut pod = |name: &str, namespace: &str, image: &str, annotations: &[(&str, &str)]| {
        let sandbox = jitsu_e2e::cri::CriClient::pod_config_in(name, namespace, &[]);
        let pod = node.run_pod(&sandbox, "jitsu").expect("RunPodSandbox");
        let container = node
            .create_container(&pod, &sandbox, name, image, annotations)
            .expect("CreateContainer");
        node.start_container(&container).expect("StartContainer");
        (pod, container)
    };
    let (counter_pod, counter) = pod(
        "counter",
        "team-a",
        COUNTER,
        &[
            ("org.jitsu.conduit", "counter"),
            ("org.jitsu.conduit-allow", "team-c/*"),
        ],
    );
    let mut client = |name: &str, namespace: &str| {
        let cmdline = format!("{name} counter=counter");
        let annotations = [
            ("org.jitsu.conduit", name),
            ("org.jitsu.cmdline", cmdline.as_str()),
        ];
        pod(name, namespace, HELLO, &annotations).0
    };
    let pod_a = client("hello-a", "team-a");
    let pod_b = client("hello-b", "team-b");
    let pod_c = client("hello-c", "team-c");
    let page = |node: &mut CriNode, pod: &str| {
        let url = format!("http://{}/", node.pod_ip(pod));
        node.containerd.fetch(&url)
    };
    let a = page(&mut node, &pod_a);
    assert!(a.contains("Visit number 1,"), "same namespace: {a}");
    let b = page(&mut node, &pod_b);
    assert!(
        b.contains("Visits: unknown (the counter refused the stream)"),
        "another namespace: {b}"
    );
    let c = page(&mut node, &pod_c);
    assert!(c.contains("Visit number 2,"), "on the allow-list: {c}");
    let status = node.containerd.monitor_status(&counter);
    assert_eq!(
        (status["boots"].as_u64(), status["conduit_refused"].as_u64()),
        (Some(1), Some(1)),
        "{status}"
    );
    for pod in [&pod_a, &pod_b, &pod_c, &counter_pod] {
        node.remove_pod(pod).expect("RemovePodSandbox");
    }
    let left = node.containerd.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
    let conduit = node.containerd.xenstore_ls("/conduit");
    assert!(
        conduit.trim().is_empty(),
        "names left in XenStore: {conduit}"
    );
}
