//! The Kubernetes act of `make demo`: the calls the kubelet makes, through
//! containerd's CRI plugin, for a pod of the hello unikernel on RuntimeClass
//! `jitsu`, narrated. Everything runs in a namespace and temp dir of its own
//! (the same fixture as `tests/tests/cri.rs`) and is removed at the end.

use std::time::{Duration, Instant};

use jitsu_e2e::cri::{CriNode, K8S_NAMESPACE};

const HELLO: &str = "docker.io/jitsu/hello:demo";

fn say(text: &str) {
    println!("\x1b[1m==>\x1b[0m {text}");
}

fn ms(since: Instant) -> String {
    format!("{:.1} ms", since.elapsed().as_secs_f64() * 1000.0)
}

/// The monitor's view: `parked` or `running`, and its boot count.
fn vm(node: &CriNode, container: &str) -> String {
    let status = node.containerd.monitor_status(container);
    format!("VM {} (boots: {})", status["state"], status["boots"])
}

fn main() {
    say("Now as Kubernetes runs it: a private containerd whose CRI plugin has the runtime handler `jitsu`,");
    say("a CNI bridge network (Debian's plugins) and a locally built pause image; we make the kubelet's calls.");
    let mut node = CriNode::start();
    node.containerd
        .import_hello_in(K8S_NAMESPACE, HELLO, &["--idle-timeout", "30s"]);
    node.wait_for_image(HELLO);

    let sandbox = CriNode::pod_config("hello", &[("org.jitsu.idle-timeout", "1s")]);
    let t = Instant::now();
    let pod = node.run_pod(&sandbox, "jitsu").expect("RunPodSandbox");
    say(&format!("RunPodSandbox(runtime_handler jitsu): {} (CNI gave the pod its namespace and eth0; the sandbox is a `jitsu pause` process, no VM)", ms(t)));
    let t = Instant::now();
    let container = node
        .create_container(&pod, &sandbox, "hello", HELLO, &[])
        .expect("CreateContainer");
    node.start_container(&container).expect("StartContainer");
    say(&format!("CreateContainer + StartContainer: {} (a TAP beside eth0, tc redirects both ways, the VM parked)", ms(t)));
    let ip = node.pod_ip(&pod);
    let (state, _) = node.container_state(&container);
    say(&format!(
        "Pod IP {ip}; ContainerStatus: {state:?}; {}",
        vm(&node, &container)
    ));

    let url = format!("http://{ip}/");
    let t = Instant::now();
    let status = node.ns().curl_status(&url);
    say(&format!(
        "curl {url} from the node: HTTP {status}, {} with starting curl (the SYN booted the VM)",
        ms(t)
    ));
    say(&format!("Now: {}", vm(&node, &container)));

    say("Idle for the pod's org.jitsu.idle-timeout (1 s): the VM goes, a fresh one is parked...");
    std::thread::sleep(Duration::from_millis(1500));
    let (state, _) = node.container_state(&container);
    say(&format!(
        "ContainerStatus: {state:?}; {}",
        vm(&node, &container)
    ));
    let t = Instant::now();
    let status = node.ns().curl_status(&url);
    say(&format!(
        "curl again: HTTP {status}, {} with starting curl; {}",
        ms(t),
        vm(&node, &container)
    ));

    let t = Instant::now();
    node.remove_pod(&pod)
        .expect("StopPodSandbox, RemovePodSandbox");
    say(&format!(
        "StopPodSandbox + RemovePodSandbox: {}; pods left: {}, shim state left: {} files",
        ms(t),
        node.pods().len(),
        node.containerd.leftovers().len()
    ));
}
