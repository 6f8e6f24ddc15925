//! A Jitsu node in a private namespace: XenStore, `jitsu daemon` (DNS on
//! 127.0.0.1:53 of the namespace) and a lazy hello-http registered as `hello`.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::netns::NetNs;
use crate::process::{run_with_timeout, Guarded};
use crate::{guest, jitsu_bin};

pub struct Node {
    pub ns: NetNs,
    pub dir: tempfile::TempDir,
    pub xenstore: PathBuf,
    pub xenstored: Option<Guarded>,
    pub daemon: Guarded,
    pub monitor: Option<Guarded>,
    pub control: PathBuf,
    /// Extra `jitsu run` arguments for the monitor (an idle timeout).
    monitor_args: Vec<String>,
}

fn wait_for_socket(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "{} never answered",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Node {
    /// `separate_xenstore`: run `jitsu xenstored` on its own (so a test can
    /// restart it) and point `jitsu daemon` at it; else the daemon embeds it.
    pub fn start(separate_xenstore: bool, daemon_args: &[&str]) -> Node {
        Node::start_with_monitor(separate_xenstore, daemon_args, &[])
    }

    /// As `start`, with `monitor_args` for the monitor's `jitsu run`.
    pub fn start_with_monitor(
        separate_xenstore: bool,
        daemon_args: &[&str],
        monitor_args: &[&str],
    ) -> Node {
        let ns = NetNs::with_tap();
        let dir = tempfile::tempdir().unwrap();
        let xenstore = dir.path().join("xenstored.sock");
        let control = dir.path().join("hello.ctl");
        let xenstored = separate_xenstore.then(|| {
            let x = Guarded::spawn(
                Command::new(jitsu_bin())
                    .arg("xenstored")
                    .arg("--socket")
                    .arg(&xenstore)
                    .stderr(Stdio::null()),
            );
            wait_for_socket(&xenstore);
            x
        });
        let mut cmd = ns.command(jitsu_bin());
        cmd.args(["daemon", "--dns-listen", "127.0.0.1:53"])
            .args(daemon_args)
            .stderr(if std::env::var_os("JITSU_TEST_VERBOSE").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        if separate_xenstore {
            cmd.arg("--xenstore-socket").arg(&xenstore);
        } else {
            cmd.arg("--xenstore-listen").arg(&xenstore);
        }
        let daemon = Guarded::spawn(&mut cmd);
        wait_for_socket(&xenstore);
        let mut node = Node {
            ns,
            dir,
            xenstore,
            xenstored,
            daemon,
            monitor: None,
            control,
            monitor_args: monitor_args.iter().map(|a| a.to_string()).collect(),
        };
        node.start_monitor();
        node.wait_state("parked");
        node
    }

    pub fn start_monitor(&mut self) {
        let mut cmd = self.ns.command(jitsu_bin());
        cmd.env("XENSTORED_PATH", &self.xenstore)
            .args(["run", "--lazy", "--name", "hello", "--control"])
            .arg(&self.control)
            .args(&self.monitor_args)
            .args(self.ns.jitsu_net_args())
            .arg(guest("hello-http"))
            .stdout(Stdio::null());
        self.monitor = Some(Guarded::spawn(&mut cmd));
    }

    /// `dig` in the namespace against the node's DNS; `extra` like `+tcp`.
    /// A second `jitsu daemon` in the node's namespace, at 127.0.0.2:53,
    /// serving `upstream.test.` from its own XenStore: what the node's DNS
    /// forwards to when started with `--forward 127.0.0.2:53`. Returns it
    /// and its XenStore socket, once that accepts connections.
    pub fn start_upstream(&self) -> (Guarded, PathBuf) {
        let socket = self.dir.path().join("upstream.sock");
        let mut cmd = self.ns.command(jitsu_bin());
        cmd.args([
            "daemon",
            "--dns-listen",
            "127.0.0.2:53",
            "--zone",
            "upstream.test.",
        ])
        .arg("--xenstore-listen")
        .arg(&socket)
        .stderr(Stdio::null());
        let upstream = Guarded::spawn(&mut cmd);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "the upstream daemon did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        (upstream, socket)
    }

    pub fn dig(&self, name: &str, qtype: &str, extra: &[&str]) -> String {
        let mut cmd = self.ns.command("dig");
        cmd.args(["@127.0.0.1", "+time=2", "+tries=1", name, qtype])
            .args(extra);
        let out = run_with_timeout(&mut cmd, Duration::from_secs(10));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ps(&self) -> serde_json::Value {
        let out: Output = Command::new(jitsu_bin())
            .args(["ps", "--json", "--xenstore-socket"])
            .arg(&self.xenstore)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// The registry entry of `hello`, once it exists.
    pub fn hello(&self) -> Option<serde_json::Value> {
        self.ps()
            .as_array()?
            .iter()
            .find(|s| s["name"] == "hello")
            .cloned()
    }

    /// The monitor's answer to a control command.
    pub fn control(&self, command: &str) -> serde_json::Value {
        let reply = crate::lazy::try_request(&self.control, command)
            .unwrap_or_else(|e| panic!("control {command}: {e}"));
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{reply:?}: {e}"))
    }

    /// Polls the monitor's status until `pred` holds.
    pub fn wait_status(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self.control("status");
            if pred(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "status never matched: {status}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn wait_state(&self, state: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.hello().filter(|s| s["state"] == state) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "hello never became {state}: {:?}\nmonitor threads: {}",
                self.hello(),
                self.monitor
                    .as_ref()
                    .map_or(String::new(), |m| crate::process::threads(m.pid()))
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
