//! Debian's xenstore-utils, pointed at our daemon with XENSTORED_PATH: Xen's
//! own client library must not be able to tell the difference.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::Daemon;

fn xs(d: &Daemon, tool: &str, args: &[&str]) -> Output {
    let out = Command::new(tool)
        .args(args)
        .env("XENSTORED_PATH", &d.socket)
        .output();
    out.unwrap_or_else(|e| panic!("{tool}: {e} (install xenstore-utils: make deps)"))
}

fn ok(d: &Daemon, tool: &str, args: &[&str]) -> String {
    let out = xs(d, tool, args);
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn write_read_list_ls_exists_rm() {
    let d = Daemon::start();
    ok(
        &d,
        "xenstore-write",
        &[
            "/jitsu/services/web/ip",
            "10.0.0.2",
            "/jitsu/services/web/state",
            "parked",
        ],
    );
    assert_eq!(
        ok(&d, "xenstore-read", &["/jitsu/services/web/ip"]),
        "10.0.0.2\n"
    );
    assert_eq!(
        ok(&d, "xenstore-list", &["/jitsu/services/web"]),
        "ip\nstate\n"
    );
    let ls = ok(&d, "xenstore-ls", &["/jitsu"]);
    assert!(
        ls.contains("ip = \"10.0.0.2\"") && ls.contains("state = \"parked\""),
        "{ls}"
    );
    assert!(xs(&d, "xenstore-exists", &["/jitsu/services/web"])
        .status
        .success());
    assert!(!xs(&d, "xenstore-exists", &["/jitsu/services/db"])
        .status
        .success());
    ok(&d, "xenstore-rm", &["/jitsu/services/web"]);
    assert!(!xs(&d, "xenstore-exists", &["/jitsu/services/web"])
        .status
        .success());
    let missing = xs(&d, "xenstore-read", &["/jitsu/services/web/ip"]);
    assert!(!missing.status.success());
    d.check();
}

#[test]
fn chmod_and_ls_show_permissions() {
    let d = Daemon::start();
    ok(&d, "xenstore-write", &["/p/q", "v"]);
    ok(&d, "xenstore-chmod", &["/p/q", "r1", "w2"]);
    let ls = ok(&d, "xenstore-ls", &["-p", "/p"]);
    assert!(ls.contains("(r1,w2)"), "{ls}");
}

#[test]
fn watch_sees_the_initial_event_and_changes() {
    let d = Daemon::start();
    ok(&d, "xenstore-write", &["/w", ""]);
    let mut watcher = Command::new("xenstore-watch")
        .args(["-n", "3", "/w"])
        .env("XENSTORED_PATH", &d.socket)
        .stdout(Stdio::piped())
        .spawn()
        .expect("xenstore-watch");
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
    assert_eq!(
        lines.next().unwrap().unwrap(),
        "/w",
        "the watch fires once when set"
    );
    ok(&d, "xenstore-write", &["/w/a", "1"]);
    assert_eq!(lines.next().unwrap().unwrap(), "/w/a");
    ok(&d, "xenstore-rm", &["/w/a"]);
    assert_eq!(lines.next().unwrap().unwrap(), "/w/a");
    let deadline = Instant::now() + Duration::from_secs(5);
    while watcher.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "xenstore-watch -n 3 did not exit after 3 events"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
