//! Containers that share a name, a prefix or a node: each is its own, and
//! nothing one does (fail, end, be cleaned up) touches another.

use jitsu_e2e::containerd::Containerd;
use jitsu_e2e::process::Guarded;
use jitsu_e2e::wait_until;

const IMAGE: &str = "docker.io/jitsu/hello:latest";

/// The guest address the shim gave container `namespace/id`.
fn ip_of(c: &Containerd, namespace: &str, id: &str) -> String {
    let (_, record) = c
        .record(namespace, id)
        .unwrap_or_else(|| panic!("no record of {namespace}/{id}"));
    record["network"]["Bridge"]["ip"]
        .as_str()
        .unwrap_or_else(|| panic!("{namespace}/{id} is not on the bridge: {record}"))
        .to_string()
}

fn get(c: &Containerd, ip: &str) -> String {
    c.ns.curl_status(&format!("http://{ip}/"))
}

fn taps(c: &Containerd) -> Vec<String> {
    c.links()
        .into_iter()
        .filter(|l| l.starts_with("jt"))
        .collect()
}

fn assert_clean(c: &Containerd) {
    assert!(c.leftovers().is_empty(), "left behind: {:?}", c.leftovers());
    assert!(taps(c).is_empty(), "TAP left behind: {:?}", c.links());
}

#[test]
fn the_same_id_in_two_namespaces_is_two_containers() {
    let c = Containerd::start();
    for namespace in ["team-a", "team-b"] {
        c.import_hello_in(namespace, "jitsu/hello:latest", &[]);
        c.run_jitsu_ok_in(namespace, IMAGE, "web", &[]);
    }
    let (a, b) = (ip_of(&c, "team-a", "web"), ip_of(&c, "team-b", "web"));
    assert_ne!(a, b);
    assert_eq!((get(&c, &a), get(&c, &b)), ("200".into(), "200".into()));
    c.remove_in("team-b", "web", "SIGTERM");
    assert_eq!(get(&c, &a), "200", "team-a's web is untouched");
    assert_eq!(ip_of(&c, "team-a", "web"), a);
    assert_eq!(taps(&c).len(), 1, "{:?}", c.links());
    c.remove_in("team-a", "web", "SIGKILL");
    assert_clean(&c);
}

/// Two containerds on one node (k3s's beside the system's) share the
/// shim's state, the bridge and the address range, not their containers.
#[test]
fn two_containerds_on_one_node_do_not_collide() {
    let system = Containerd::start();
    let k3s = Containerd::beside(&system);
    for c in [&system, &k3s] {
        c.import_hello("jitsu/hello:latest", &[]);
        c.run_jitsu_ok(IMAGE, "web", &[]);
    }
    let (a, b) = (
        ip_of(&system, "default", "web"),
        ip_of(&k3s, "default", "web"),
    );
    assert_ne!(a, b);
    assert_eq!(
        (get(&system, &a), get(&system, &b)),
        ("200".into(), "200".into())
    );
    k3s.remove("web", "SIGTERM");
    assert!(k3s.record("default", "web").is_none());
    assert_eq!(ip_of(&system, "default", "web"), a);
    assert_eq!(
        get(&system, &a),
        "200",
        "the system containerd's web is untouched"
    );
    system.remove("web", "SIGTERM");
    assert_clean(&system);
}

#[test]
fn ids_that_share_a_prefix_get_their_own_taps() {
    let c = Containerd::start();
    c.import_hello("jitsu/hello:latest", &[]);
    for id in ["service-alpha-1", "service-alpha-2"] {
        c.run_jitsu_ok(IMAGE, id, &[]);
    }
    assert_eq!(taps(&c).len(), 2, "{:?}", c.links());
    for id in ["service-alpha-1", "service-alpha-2"] {
        assert_eq!(get(&c, &ip_of(&c, "default", id)), "200", "{id}");
    }
    c.remove("service-alpha-1", "SIGTERM");
    assert_eq!(get(&c, &ip_of(&c, "default", "service-alpha-2")), "200");
    c.remove("service-alpha-2", "SIGTERM");
    assert_clean(&c);
}

/// A container whose create fails (a bad ELF in another namespace, under
/// the same id) undoes only what it made.
#[test]
fn a_failing_create_harms_no_other_container() {
    let c = Containerd::start();
    c.import_hello_in("team-a", "jitsu/hello:latest", &[]);
    c.run_jitsu_ok_in("team-a", IMAGE, "web", &[]);
    let a = ip_of(&c, "team-a", "web");
    let elf = std::fs::read(jitsu_e2e::guest("hello-http")).unwrap();
    c.import_kernel_bytes("jitsu/broken:latest", &elf[..elf.len() / 3]);
    // import_kernel_bytes imports into "default": the same id, another namespace.
    let out = c.run_jitsu("docker.io/jitsu/broken:latest", "web", &[]);
    assert!(!out.status.success(), "a truncated ELF cannot be parked");
    let _ = c.ctr(&["container", "delete", "web"]);
    assert_eq!(get(&c, &a), "200", "team-a's web keeps its network");
    assert!(c.record("team-a", "web").is_some(), "and its state");
    assert!(
        c.record("default", "web").is_none(),
        "the failed one left none"
    );
    assert_eq!(taps(&c).len(), 1);
    c.remove_in("team-a", "web", "SIGTERM");
    assert_clean(&c);
}

/// After a shim is killed, containerd's cleanup call ends the container's
/// process only if it is still that process: here the recorded pid is
/// given to another (as a recycled pid would be), which must survive.
#[test]
fn cleanup_after_a_killed_shim_never_signals_a_recycled_pid() {
    let c = Containerd::start();
    c.import_hello("jitsu/hello:latest", &[]);
    c.run_jitsu_ok(IMAGE, "h1", &[]);
    let (dir, mut record) = c.record("default", "h1").unwrap();
    let monitor = record["process"]["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("the task to stop", || {
        c.task_status("h1").as_deref() == Some("STOPPED")
    });
    let mut stranger = Guarded::spawn(std::process::Command::new("sleep").arg("60"));
    record["process"]["pid"] = stranger.pid().into();
    std::fs::write(dir.join("state.json"), record.to_string()).unwrap();
    let shim = c.shim_pid("h1");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = c.ctr(&["task", "delete", "h1"]);
    c.ctr_ok(&["container", "delete", "h1"]);
    wait_until("the cleanup", || c.leftovers().is_empty());
    assert!(
        stranger.child_alive(),
        "a stranger with the old pid was signalled"
    );
    assert!(stranger.child().try_wait().unwrap().is_none());
    assert_clean(&c);
}

/// The shims of this containerd (their command lines name its socket).
fn shims(c: &Containerd) -> Vec<String> {
    let found = std::process::Command::new("pgrep")
        .args([
            "-f",
            &format!("containerd-shim-jitsu-v1.*{}", c.socket.display()),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&found.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// All the tasks of a namespace share one shim: deleting one (containerd
/// then runs the shim's cleanup command for it) leaves the shim serving the
/// others and the next, also across a containerd restart; it ends with the
/// last container.
#[test]
fn the_tasks_of_a_namespace_share_one_shim() {
    let mut c = Containerd::start();
    c.import_hello("jitsu/hello:latest", &[]);
    for id in ["a", "b", "c"] {
        c.run_jitsu_ok(IMAGE, id, &[]);
    }
    assert_eq!(shims(&c).len(), 1, "{:?}", shims(&c));
    c.remove("b", "SIGTERM");
    for id in ["a", "c"] {
        assert_eq!(get(&c, &ip_of(&c, "default", id)), "200", "{id}");
    }
    c.run_jitsu_ok(IMAGE, "d", &[]);
    assert_eq!(
        shims(&c).len(),
        1,
        "the next task finds the shim: {:?}",
        shims(&c)
    );
    c.restart();
    for id in ["a", "c", "d"] {
        assert_eq!(c.task_status(id).as_deref(), Some("RUNNING"), "{id}");
        assert_eq!(get(&c, &ip_of(&c, "default", id)), "200", "{id}");
    }
    for id in ["a", "c", "d"] {
        c.remove(id, "SIGKILL");
    }
    wait_until("the shim to end with its last container", || {
        shims(&c).is_empty()
    });
    assert_clean(&c);
}
