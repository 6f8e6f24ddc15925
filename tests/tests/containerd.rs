//! `ctr run` of a unikernel image through containerd-shim-jitsu-v1, against
//! a real containerd that the test starts in a namespace of its own.

use std::process::{Command, Stdio};
use std::time::Duration;

use jitsu_e2e::containerd::Containerd;
use jitsu_e2e::lazy::try_request;
use jitsu_e2e::process::{run_with_timeout, Guarded};
use jitsu_e2e::wait_until;

const IMAGE: &str = "docker.io/jitsu/hello:latest";

fn status(c: &Containerd, id: &str) -> serde_json::Value {
    let reply = try_request(&c.control(id), "status").expect("control socket");
    serde_json::from_str(&reply).unwrap()
}

fn curl(c: &Containerd, url: &str) -> String {
    c.ns.curl_status(url)
}

fn assert_clean(c: &Containerd) {
    assert!(c.leftovers().is_empty(), "left behind: {:?}", c.leftovers());
    assert!(
        !c.links().iter().any(|l| l.starts_with("jt")),
        "TAP left behind: {:?}",
        c.links()
    );
    let monitors = Command::new("pgrep")
        .args(["-f", &c.state.join("containers").display().to_string()])
        .output()
        .unwrap();
    assert!(
        monitors.stdout.is_empty(),
        "a monitor is still running: {}",
        String::from_utf8_lossy(&monitors.stdout)
    );
}

#[test]
fn ctr_run_parks_the_first_connection_boots_and_kill_delete_clean_up() {
    let c = Containerd::start();
    c.import_hello("jitsu/hello:latest", &[]);
    c.run_jitsu_ok(IMAGE, "h1", &[]);
    assert_eq!(c.task_status("h1").as_deref(), Some("RUNNING"));
    let parked = status(&c, "h1");
    assert_eq!(
        (parked["state"].as_str(), parked["boots"].as_u64()),
        (Some("parked"), Some(0)),
        "{parked}"
    );
    assert!(c.links().iter().any(|l| l == "jitsu0"), "{:?}", c.links());

    assert_eq!(curl(&c, "http://10.77.0.2/"), "200", "the SYN boots it");
    assert_eq!(status(&c, "h1")["boots"], 1);

    c.remove("h1", "SIGTERM");
    assert_clean(&c);
}

#[test]
fn the_console_is_the_tasks_stdout() {
    let c = Containerd::start();
    c.import_hello("jitsu/hello:latest", &["--boot", "eager"]);
    let mut cmd = Command::new("ctr");
    cmd.arg("--address")
        .arg(&c.socket)
        .args(["run", "--runtime", "io.containerd.jitsu.v1", IMAGE, "h2"])
        .stdout(Stdio::piped());
    let mut run = Guarded::spawn(&mut cmd);
    let out = run.wait_for_output(
        "hello-http: listening on 10.77.0.2:80",
        Duration::from_secs(20),
    );
    assert!(out.contains("listening"), "{out}");
    c.ctr_ok(&["task", "kill", "h2"]);
    let status = run.wait_timeout(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(143),
        "ctr run ends with the task's status"
    );
    c.ctr_ok(&["container", "delete", "h2"]);
    assert_clean(&c);
}

#[test]
fn idle_goes_back_to_parked_while_the_task_keeps_running() {
    let c = Containerd::start();
    c.import_hello("jitsu/hello:idle", &["--idle-timeout", "300ms"]);
    c.run_jitsu_ok("docker.io/jitsu/hello:idle", "h3", &[]);
    assert_eq!(curl(&c, "http://10.77.0.2/"), "200");
    wait_until("parking after idle", || {
        status(&c, "h3")["state"] == "parked"
    });
    assert_eq!(
        c.task_status("h3").as_deref(),
        Some("RUNNING"),
        "containerd still sees a running task"
    );
    assert_eq!(
        curl(&c, "http://10.77.0.2/"),
        "200",
        "a second cold request"
    );
    assert_eq!(status(&c, "h3")["boots"], 2);
    c.remove("h3", "SIGKILL");
    assert_clean(&c);
}

#[test]
fn a_dns_lookup_boots_it_through_jitsu_daemon() {
    let c = Containerd::start();
    let _daemon = c.start_daemon();
    c.import_hello("jitsu/hello:latest", &["--dns-name", "hello"]);
    c.run_jitsu_ok(IMAGE, "h4", &[]);
    let ps = || c.ps();
    wait_until("the registration", || ps()[0]["state"] == "parked");
    let mut dig = c.ns.command("dig");
    dig.args(["@127.0.0.1", "+short", "hello.jitsu.internal"]);
    let answer = run_with_timeout(&mut dig, Duration::from_secs(10));
    assert_eq!(String::from_utf8_lossy(&answer.stdout).trim(), "10.77.0.2");
    wait_until("the boot", || ps()[0]["state"] == "running");
    c.remove("h4", "SIGTERM");
    wait_until("the registry entry to go", || {
        ps().as_array().is_some_and(|a| a.is_empty())
    });
    assert_clean(&c);
}

#[test]
fn a_killed_shim_leaves_nothing_after_cleanup() {
    let c = Containerd::start();
    c.import_hello("jitsu/hello:latest", &[]);
    c.run_jitsu_ok(IMAGE, "h5", &[]);
    let shim = c.shim_pid("h5");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("containerd to see the task end", || {
        c.task_status("h5").as_deref() != Some("RUNNING")
    });
    let _ = c.ctr(&["task", "delete", "h5"]);
    c.ctr_ok(&["container", "delete", "h5"]);
    wait_until("the cleanup", || {
        c.leftovers().is_empty() && !c.links().iter().any(|l| l.starts_with("jt"))
    });
    assert_clean(&c);
}

#[test]
fn a_bad_image_or_annotation_fails_create_with_the_reason() {
    let c = Containerd::start();
    c.import_hello("jitsu/hello:latest", &[]);
    let out = c.run_jitsu(IMAGE, "h6", &["--annotation", "org.jitsu.mem=3M"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("memory 3M is out of range"), "{err}");
    let out = c.run_jitsu(IMAGE, "h7", &["--annotation", "org.jitsu.colour=red"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown annotation org.jitsu.colour"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = c.ctr(&["container", "delete", "h6"]);
    let _ = c.ctr(&["container", "delete", "h7"]);
    assert_clean(&c);
}

/// The image is well formed but its ELF is not: Create fails with the
/// monitor's own reason, and no task is left to exit at once.
#[test]
fn a_bad_elf_in_a_good_image_fails_create_with_the_monitors_reason() {
    let c = Containerd::start();
    let elf = std::fs::read(jitsu_e2e::guest("hello-http")).unwrap();
    c.import_kernel_bytes("jitsu/broken:latest", &elf[..elf.len() / 2]);
    let out = c.run_jitsu("docker.io/jitsu/broken:latest", "b1", &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot be parked") && err.contains("truncated ELF"),
        "{err}"
    );
    assert_eq!(c.task_status("b1"), None, "no task was created");
    let _ = c.ctr(&["container", "delete", "b1"]);
    assert_clean(&c);
}

#[test]
fn exec_and_pause_are_refused_clearly() {
    let c = Containerd::start();
    c.import_hello("jitsu/hello:latest", &[]);
    c.run_jitsu_ok(IMAGE, "h8", &[]);
    let exec = c.ctr(&["task", "exec", "--exec-id", "x", "h8", "/bin/sh"]);
    assert!(
        String::from_utf8_lossy(&exec.stderr).contains("not supported for unikernels"),
        "{}",
        String::from_utf8_lossy(&exec.stderr)
    );
    let pause = c.ctr(&["task", "pause", "h8"]);
    assert!(
        String::from_utf8_lossy(&pause.stderr).contains("not supported for unikernels"),
        "{}",
        String::from_utf8_lossy(&pause.stderr)
    );
    c.remove("h8", "SIGTERM");
    assert_clean(&c);
}

/// `ctr run` on any timeline: parked for any time (the image's idle timeout
/// is 1 s), the first connection is answered with one SYN and boots once.
#[test]
fn a_task_parked_for_any_time_answers_its_first_syn() {
    const IDLE: Duration = Duration::from_secs(1);
    let c = Containerd::start();
    c.import_hello("jitsu/hello:idle", &["--idle-timeout", "1s"]);
    c.run_jitsu_ok("docker.io/jitsu/hello:idle", "t1", &[]);
    let addr = std::net::SocketAddr::from(([10, 77, 0, 2], 80));
    for (n, factor) in (1u64..).zip(jitsu_e2e::http::PARKINGS) {
        if n > 1 {
            wait_until("re-parked", || {
                let s = status(&c, "t1");
                s["state"] == "parked" && s["boots"] == n - 1
            });
        }
        std::thread::sleep(IDLE.mul_f64(factor));
        let (reply, retrans) = c.ns.run_in(move || jitsu_e2e::http::get(addr));
        assert!(
            reply.starts_with("HTTP/1.1 200"),
            "parked {factor}x: {reply}"
        );
        assert_eq!(retrans, 0, "parked {factor}x: one SYN");
        assert_eq!(status(&c, "t1")["boots"], n, "parked {factor}x: one boot");
    }
    assert_eq!(c.task_status("t1").as_deref(), Some("RUNNING"));
    c.remove("t1", "SIGTERM");
    assert_clean(&c);
}

/// containerd restarted (SIGTERM, started again) under parked and running
/// tasks: the tasks live on (their shims do), stay reachable, and kill and
/// delete through the new containerd still clean up.
#[test]
fn tasks_survive_a_containerd_restart_and_still_clean_up() {
    let mut c = Containerd::start();
    c.import_hello("jitsu/hello:latest", &[]);
    c.run_jitsu_ok(IMAGE, "parked", &[]);
    c.run_jitsu_ok(IMAGE, "running", &[]);
    let ip = |id: &str| {
        let (_, record) = c.record("default", id).unwrap();
        record["network"]["Bridge"]["ip"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (parked, running) = (ip("parked"), ip("running"));
    assert_eq!(curl(&c, &format!("http://{running}/")), "200");
    c.restart();
    for id in ["parked", "running"] {
        assert_eq!(c.task_status(id).as_deref(), Some("RUNNING"), "{id}");
        assert_eq!(status(&c, id)["state"], id, "{id} as it was");
    }
    assert_eq!(curl(&c, &format!("http://{parked}/")), "200", "boots now");
    assert_eq!(curl(&c, &format!("http://{running}/")), "200");
    assert_eq!(status(&c, "parked")["boots"], 1);
    c.remove("parked", "SIGTERM");
    c.remove("running", "SIGKILL");
    assert_clean(&c);
}

/// Images are hostile input: names in them are resolved inside the image,
/// only regular files of bounded size are read, and a refusal harms neither
/// the shim (one per namespace) nor the tasks it already runs.
#[test]
fn hostile_images_fail_create_with_the_reason_and_harm_no_one() {
    use jitsu_spec::archive::{Entry, File};
    let c = Containerd::start();
    c.import_hello("jitsu/hello:latest", &[]);
    c.run_jitsu_ok(IMAGE, "good", &[]);
    assert_eq!(curl(&c, "http://10.77.0.2/"), "200");
    let shim = c.shim_pid("good");

    let host_elf = std::fs::canonicalize(jitsu_e2e::guest("hello-http")).unwrap();
    let host_elf = host_elf.to_str().unwrap();
    let host_dir = std::path::Path::new(host_elf)
        .parent()
        .unwrap()
        .to_str()
        .unwrap();
    let elf = std::fs::read(host_elf).unwrap();
    let kernel = |path| {
        Entry::File(File {
            path,
            mode: 0o755,
            data: &elf,
        })
    };
    let cases: &[(&str, &str, Vec<Entry>, &str)] = &[
        (
            "host-link",
            "/unikernel.elf",
            vec![Entry::Symlink {
                path: "unikernel.elf",
                target: host_elf,
            }],
            "unikernel.elf: not in the image",
        ),
        (
            "host-dir",
            "/boot/hello-http",
            vec![Entry::Symlink {
                path: "boot",
                target: host_dir,
            }],
            "boot/hello-http: not in the image",
        ),
        (
            "climb",
            "/unikernel.elf",
            vec![Entry::Symlink {
                path: "unikernel.elf",
                target: "../../../../../../../../../../../..",
            }],
            "unikernel.elf: is a directory, not a regular file",
        ),
        (
            "zero-metadata",
            "/unikernel.elf",
            vec![
                kernel("unikernel.elf"),
                Entry::Symlink {
                    path: "jitsu.json",
                    target: "/dev/zero",
                },
                Entry::CharDevice {
                    path: "dev/zero",
                    major: 1,
                    minor: 5,
                },
            ],
            "jitsu.json: is a character device, not a regular file",
        ),
        (
            "fifo-kernel",
            "/unikernel.elf",
            vec![Entry::Fifo {
                path: "unikernel.elf",
            }],
            "unikernel.elf: is a FIFO, not a regular file",
        ),
        (
            "huge-kernel",
            "/unikernel.elf",
            vec![Entry::Hole {
                path: "unikernel.elf",
                size: 1 << 30,
            }],
            "unikernel.elf: is 1073741824 bytes, more than the 67108864 bytes allowed",
        ),
        (
            "dotdot",
            "/boot/../../unikernel.elf",
            vec![kernel("unikernel.elf")],
            "must stay inside the image",
        ),
    ];
    for (name, kernel_path, entries, reason) in cases {
        let image = format!("jitsu/{name}:latest");
        c.import_entries(&image, kernel_path, entries);
        let out = c.run_jitsu(&format!("docker.io/{image}"), name, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: created");
        assert!(err.contains(reason), "{name}: {err}");
        assert_eq!(c.task_status(name), None, "{name}: no task");
        let _ = c.ctr(&["container", "delete", name]);
        assert_eq!(curl(&c, "http://10.77.0.2/"), "200", "after {name}");
        assert_eq!(c.shim_pid("good"), shim, "after {name}: the same shim");
    }
    c.remove("good", "SIGTERM");
    assert_clean(&c);
}

/// The monitor of a task runs jailed: every thread under seccomp, with
/// no_new_privs, no capabilities, its own uid (another task's differs), and
/// a root of its own; and it still serves.
#[test]
fn a_tasks_monitor_runs_jailed() {
    let c = Containerd::start();
    c.import_hello("jitsu/hello:latest", &[]);
    let _daemon = c.start_daemon();
    c.run_jitsu_ok(IMAGE, "j1", &[]);
    // With a name: its registry thread too, and its entry in XenStore.
    c.run_jitsu_ok(IMAGE, "j2", &["--annotation", "org.jitsu.dns-name=jailed"]);
    let pid = |id: &str| {
        let (_, record) = c.record("default", id).expect("a record");
        record["process"]["pid"].as_i64().expect("a monitor") as i32
    };
    assert_eq!(curl(&c, "http://10.77.0.2/"), "200", "jailed, it serves");
    let uid = |pid: i32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap()
            .to_string()
    };
    for id in ["j1", "j2"] {
        jitsu_e2e::jail::assert_jailed(pid(id));
    }
    assert_ne!(uid(pid("j1")), uid(pid("j2")), "one uid per container");
    let names = jitsu_e2e::jail::threads(pid("j2"))
        .into_iter()
        .map(|t| t.thread)
        .collect::<Vec<_>>();
    assert!(names.iter().any(|n| n == "vcpu0"), "{names:?}");
    assert!(names.iter().any(|n| n == "registry"), "{names:?}");
    wait_until("the jailed monitor's registration", || {
        c.ps().as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["name"] == "jailed" && s["state"] == "parked")
        })
    });
    c.remove("j1", "SIGTERM");
    c.remove("j2", "SIGTERM");
    assert_clean(&c);
}

/// The shim's own logs reach containerd's log, a refusal with its reason.
#[test]
fn the_shims_logs_reach_containerds_log() {
    let c = Containerd::start();
    c.import_hello("jitsu/hello:latest", &[]);
    c.run_jitsu_ok(IMAGE, "logged", &[]);
    let out = c.run_jitsu(IMAGE, "refused", &["--annotation", "org.jitsu.mem=3M"]);
    assert!(!out.status.success());
    wait_until("the shim's log lines", || {
        let log = c.log();
        log.contains("created")
            && log.contains("logged")
            && log.contains("memory 3M is out of range")
    });
    let _ = c.ctr(&["container", "delete", "refused"]);
    c.remove("logged", "SIGTERM");
    assert_clean(&c);
}

/// The monitor runs in the task's cgroup (`linux.cgroupsPath`), capped at
/// the guest's memory plus the monitor's overhead, and `ctr task metrics`
/// reads its memory, CPU and pids; the cgroup goes with the task.
#[test]
fn a_tasks_metrics_are_its_monitors_cgroup() {
    let c = Containerd::start();
    c.import_hello("jitsu/hello:latest", &[]);
    c.run_jitsu_ok(IMAGE, "m1", &["--annotation", "org.jitsu.mem=32M"]);
    assert_eq!(curl(&c, "http://10.77.0.2/"), "200");
    let (_, record) = c.record("default", "m1").expect("a record");
    let pid = record["process"]["pid"].as_i64().unwrap();
    let cgroup = record["cgroup"]["path"]
        .as_str()
        .expect("a cgroup")
        .to_string();
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        membership
            .lines()
            .any(|l| l.ends_with(&format!("/{cgroup}"))),
        "the monitor is in {cgroup}: {membership}"
    );
    let metrics = c.ctr_ok(&["task", "metrics", "m1"]);
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some(name)).then(|| words.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("no {name} in:\n{metrics}"))
    };
    let (usage, limit) = if metrics.contains("memory.usage_in_bytes") {
        (
            value("memory.usage_in_bytes"),
            value("memory.limit_in_bytes"),
        )
    } else {
        (value("memory.usage"), value("memory.usage_limit"))
    };
    assert!(
        usage > 100 << 10,
        "a booted guest's memory is charged: {metrics}"
    );
    assert_eq!(limit, (32 << 20) + (32 << 20), "{metrics}");
    c.remove("m1", "SIGTERM");
    assert_clean(&c);
    let v1 = std::path::Path::new("/sys/fs/cgroup/memory").join(&cgroup);
    let v2 = std::path::Path::new("/sys/fs/cgroup").join(&cgroup);
    assert!(!v1.exists() && !v2.exists(), "the cgroup {cgroup} is gone");
}

/// Two `ctr run` tasks talk over Conduit by name: hello-http asks the
/// counter for each page's visit number; a task in another containerd
/// namespace (another group) is refused, and its page says so.
#[test]
fn ctr_tasks_talk_over_conduit_by_name_within_their_namespace() {
    let c = Containerd::start();
    let _daemon = c.start_daemon();
    c.import_guest_in(
        "default",
        "counter",
        "jitsu/counter:latest",
        &["--conduit", "counter"],
    );
    c.import_hello("jitsu/hello-counter:latest", &[]);
    c.import_hello_in("other", "jitsu/hello-counter:latest", &[]);
    c.run_jitsu_ok("docker.io/jitsu/counter:latest", "counter", &[]);
    let as_client = |name: &str| {
        [
            "--annotation".to_string(),
            format!("org.jitsu.conduit={name}"),
            "--annotation".to_string(),
            format!("org.jitsu.cmdline={name} counter=counter"),
        ]
    };
    let args = as_client("hello-1");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    c.run_jitsu_ok("docker.io/jitsu/hello-counter:latest", "h1", &args);
    let stranger = as_client("hello-2");
    let stranger: Vec<&str> = stranger.iter().map(String::as_str).collect();
    c.run_jitsu_ok_in(
        "other",
        "docker.io/jitsu/hello-counter:latest",
        "h2",
        &stranger,
    );
    assert_eq!(status(&c, "counter")["boots"], 0, "parked until asked");

    let h1 = format!("http://{}/", c.address_of("default", "h1"));
    let first = c.fetch(&h1);
    assert!(first.contains("Visit number 1,"), "{first}");
    assert!(c.fetch(&h1).contains("Visit number 2,"));
    let h2 = format!("http://{}/", c.address_of("other", "h2"));
    let refused = c.fetch(&h2);
    assert!(
        refused.contains("Visits: unknown (the counter refused the stream)"),
        "{refused}"
    );
    let counter = c.monitor_status("counter");
    assert_eq!(
        (
            counter["boots"].as_u64(),
            counter["conduit_refused"].as_u64()
        ),
        (Some(1), Some(1)),
        "{counter}"
    );
    assert!(c.xenstore_ls("/conduit").contains("counter = "));

    c.remove("counter", "SIGTERM");
    c.remove("h1", "SIGKILL");
    c.remove_in("other", "h2", "SIGTERM");
    assert_clean(&c);
    let conduit = c.xenstore_ls("/conduit");
    assert!(
        conduit.trim().is_empty(),
        "names left in XenStore: {conduit}"
    );
}
