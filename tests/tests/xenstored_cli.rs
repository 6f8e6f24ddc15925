//! `jitsu xenstored` as a process: it serves the socket named by
//! XENSTORED_PATH (or --socket), Xen's tools use it, SIGTERM removes it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jitsu_e2e::jitsu_bin;
use jitsu_e2e::process::Guarded;

fn wait_for(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn serves_xenstored_path_and_cleans_up_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/xenstored/socket");
    let mut daemon = Guarded::spawn(
        Command::new(jitsu_bin())
            .arg("xenstored")
            .env("XENSTORED_PATH", &socket)
            .stderr(Stdio::null()),
    );
    wait_for(&socket);
    let xs = |tool: &str, args: &[&str]| {
        Command::new(tool)
            .args(args)
            .env("XENSTORED_PATH", &socket)
            .output()
            .unwrap()
    };
    assert!(
        xs("xenstore-write", &["/jitsu/services/web/ip", "10.77.0.2"])
            .status
            .success()
    );
    assert_eq!(
        xs("xenstore-read", &["/jitsu/services/web/ip"]).stdout,
        b"10.77.0.2\n"
    );

    // A second daemon on the same socket is refused, not allowed to steal it.
    let second = Command::new(jitsu_bin())
        .args(["xenstored", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(
        xs("xenstore-read", &["/jitsu/services/web/ip"]).stdout,
        b"10.77.0.2\n"
    );

    let pid = nix::unistd::Pid::from_raw(daemon.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(daemon.wait_timeout(Duration::from_secs(5)).code(), Some(0));
    assert!(!socket.exists(), "the socket is removed on exit");
}

/// Clients act as the domain of their uid: root is dom0; a jailed
/// monitor's uid is its own domain, which writes only the registry entries
/// it owns (it may create a new one, not touch another's); any other uid
/// is turned away.
#[test]
fn each_client_acts_as_the_domain_of_its_uid() {
    use jitsu_registry::identity::{domid_of_slot, monitor_uid};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let socket = dir.path().join("xenstored/socket");
    let _daemon = Guarded::spawn(
        Command::new(jitsu_bin())
            .args(["xenstored", "--socket"])
            .arg(&socket)
            .stderr(Stdio::null()),
    );
    wait_for(&socket);
    let as_uid = |uid: Option<u32>, tool: &str, args: &[&str]| -> bool {
        let mut cmd = match uid {
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={uid}"))
                    .arg("--clear-groups")
                    .arg(tool);
                c
            }
            None => Command::new(tool),
        };
        cmd.args(args)
            .env("XENSTORED_PATH", &socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    let (first, second) = (monitor_uid(0), monitor_uid(1));
    // Root claims `web` for the first monitor's domain, as the shim does.
    let web = "/jitsu/services/web";
    assert!(as_uid(
        None,
        "xenstore-write",
        &[&format!("{web}/owner"), "a"]
    ));
    let perms = format!("r{}", domid_of_slot(0));
    assert!(as_uid(None, "xenstore-chmod", &["-r", web, &perms]));
    assert!(as_uid(
        Some(first),
        "xenstore-write",
        &[&format!("{web}/ip"), "10.77.0.2"]
    ));
    assert!(
        !as_uid(
            Some(second),
            "xenstore-write",
            &[&format!("{web}/ip"), "6.6.6.6"]
        ),
        "another monitor writes into web"
    );
    assert!(
        !as_uid(Some(second), "xenstore-rm", &[web]),
        "another monitor removes web"
    );
    assert!(
        as_uid(Some(second), "xenstore-read", &[&format!("{web}/ip")]),
        "all may read"
    );
    // A new name of its own, under the registry's root.
    assert!(as_uid(
        Some(second),
        "xenstore-write",
        &["/jitsu/services/api/ip", "10.77.0.3"]
    ));
    assert!(
        !as_uid(Some(second), "xenstore-write", &["/elsewhere", "x"]),
        "outside the registry"
    );
    assert!(
        !as_uid(Some(1234), "xenstore-read", &[&format!("{web}/ip")]),
        "a stranger"
    );
    let read = Command::new("xenstore-read")
        .arg(format!("{web}/ip"))
        .env("XENSTORED_PATH", &socket)
        .output()
        .unwrap();
    assert_eq!(read.stdout, b"10.77.0.2\n");
}

/// A socket in a folder other users may not enter would keep jailed
/// monitors out of the registry: the daemon says so.
#[test]
fn a_socket_in_a_closed_folder_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let log = dir.path().join("stderr");
    let socket = dir.path().join("socket");
    let _daemon = Guarded::spawn(
        Command::new(jitsu_bin())
            .args(["xenstored", "--socket"])
            .arg(&socket)
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    wait_for(&socket);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        if said.contains("is closed to other users") {
            break;
        }
        assert!(Instant::now() < deadline, "no warning: {said}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
