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
