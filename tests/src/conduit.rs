//! Unikernels that talk over Conduit, on one node: a private XenStore
//! (`jitsu xenstored`), a private socket directory, a namespace with a
//! bridge (for the lazy listeners' TAPs), and monitors that are jailed as
//! the shim jails them (their own uid, whose XenStore domain is theirs).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::netns::NetNs;
use crate::process::{run_with_timeout, Guarded};
use crate::{guest, jitsu_bin, monitor_bin};

pub struct ConduitNode {
    pub ns: NetNs,
    pub dir: tempfile::TempDir,
    pub xenstore: PathBuf,
    pub sockets: PathBuf,
    _xenstored: Guarded,
    next_ip: AtomicU32,
}

/// A monitor's jail: a uid (a XenStore domain of its own) and a root.
pub struct Jail {
    pub uid: u32,
    pub root: PathBuf,
}

/// A parked unikernel with a Conduit name (and a TAP, as lazy ones need).
pub struct Listener {
    pub monitor: Guarded,
    pub control: PathBuf,
    pub uid: u32,
    pub ip: std::net::Ipv4Addr,
}

/// Slots for jailed monitors, apart from the shim's (which start at 0) and
/// from other test processes'.
fn next_slot() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    0x4000 + (std::process::id() % 0x200) * 16 + NEXT.fetch_add(1, Ordering::Relaxed) % 16
}

impl ConduitNode {
    pub fn start() -> ConduitNode {
        let ns = NetNs::with_bridge();
        let dir = tempfile::tempdir().expect("temp dir");
        // Jailed monitors reach their roots and the sockets through it.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let xenstore = dir.path().join("xenstored.sock");
        let xenstored = Guarded::spawn(
            Command::new(jitsu_bin())
                .args(["xenstored", "--socket"])
                .arg(&xenstore)
                .stderr(Stdio::null()),
        );
        crate::wait_until("XenStore", || {
            std::os::unix::net::UnixStream::connect(&xenstore).is_ok()
        });
        ConduitNode {
            sockets: dir.path().join("conduit"),
            ns,
            dir,
            xenstore,
            _xenstored: xenstored,
            next_ip: AtomicU32::new(2),
        }
    }

    /// A fresh jail.
    pub fn jail(&self) -> Jail {
        let slot = next_slot();
        let root = self.dir.path().join(crate::unique_name("jail"));
        std::fs::create_dir(&root).unwrap();
        Jail {
            uid: jitsu_registry::identity::monitor_uid(slot),
            root,
        }
    }

    /// A monitor's command with the node's XenStore and socket directory,
    /// jailed, as `name` in `group`.
    pub fn monitor(&self, name: &str, group: &str, jail: &Jail) -> Command {
        let mut cmd = self.ns.command(monitor_bin());
        cmd.env("XENSTORED_PATH", &self.xenstore)
            .args(["--conduit", name, "--conduit-group", group])
            .arg("--conduit-dir")
            .arg(&self.sockets)
            .args(["--jail-uid", &jail.uid.to_string()])
            .args(["--jail-gid", &jail.uid.to_string()])
            .arg("--jail-root")
            .arg(&jail.root);
        cmd
    }

    /// A parked counter named `name`; `extra` for its monitor.
    pub fn counter(&self, name: &str, group: &str, extra: &[&str]) -> Listener {
        self.parked("counter", name, group, extra, &[])
    }

    /// A parked `kernel` named `name`, on a TAP of the bridge; `extra` for
    /// its monitor, `args` for the guest.
    pub fn parked(
        &self,
        kernel: &str,
        name: &str,
        group: &str,
        extra: &[&str],
        args: &[&str],
    ) -> Listener {
        let jail = self.jail();
        let n = self.next_ip.fetch_add(1, Ordering::Relaxed);
        let tap = format!("jc{n}");
        self.ns.add_bridge_tap(&tap);
        let ip = std::net::Ipv4Addr::new(10, 77, 0, n as u8);
        let control = self.dir.path().join(format!("{name}.ctl"));
        let mut cmd = self.monitor(name, group, &jail);
        cmd.args(["--lazy", "--control"])
            .arg(&control)
            .args([
                "--net",
                &tap,
                "--ip",
                &format!("{ip}/16"),
                "--gw",
                "10.77.0.1",
            ])
            .args(extra)
            .arg(guest(kernel))
            .arg("--")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let listener = Listener {
            monitor: Guarded::spawn(&mut cmd),
            control,
            uid: jail.uid,
            ip,
        };
        listener.wait(|s| s["state"] == "parked");
        listener
    }

    /// A probe named `name` in `group` (no network: over Conduit only),
    /// run to its end; its arguments are the guest's.
    pub fn probe(&self, name: &str, group: &str, args: &[&str]) -> Output {
        let mut cmd = self.probe_command(name, group, args);
        run_with_timeout(&mut cmd, Duration::from_secs(60))
    }

    /// A probe with a TAP on the bridge too (for TCP to a listener), run
    /// to its end.
    pub fn probe_on_bridge(&self, name: &str, args: &[&str]) -> Output {
        let n = self.next_ip.fetch_add(1, Ordering::Relaxed);
        let tap = format!("jc{n}");
        self.ns.add_bridge_tap(&tap);
        let ip = std::net::Ipv4Addr::new(10, 77, 0, n as u8);
        let jail = self.jail();
        let mut cmd = self.monitor(name, "default", &jail);
        cmd.args([
            "--net",
            &tap,
            "--ip",
            &format!("{ip}/16"),
            "--gw",
            "10.77.0.1",
        ])
        .arg(guest("probe"))
        .arg("--")
        .args(args);
        run_with_timeout(&mut cmd, Duration::from_secs(120))
    }

    pub fn probe_command(&self, name: &str, group: &str, args: &[&str]) -> Command {
        let jail = self.jail();
        let mut cmd = self.monitor(name, group, &jail);
        cmd.arg(guest("probe")).arg("--").args(args);
        cmd
    }

    /// `xenstore-ls` of `path`, as dom0 sees it.
    pub fn xenstore_ls(&self, path: &str) -> String {
        let out = Command::new("xenstore-ls")
            .env("XENSTORED_PATH", &self.xenstore)
            .arg(path)
            .output()
            .expect("xenstore-ls");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn socket_dir(&self) -> &Path {
        &self.sockets
    }
}

impl Listener {
    pub fn status(&self) -> serde_json::Value {
        let reply = crate::lazy::try_request(&self.control, "status")
            .unwrap_or_else(|e| panic!("status: {e}"));
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{reply:?}: {e}"))
    }

    /// Polls the status until `pred` holds (10 s).
    pub fn wait(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(reply) = crate::lazy::try_request(&self.control, "status") {
                if let Ok(status) = serde_json::from_str::<serde_json::Value>(&reply) {
                    if pred(&status) {
                        return status;
                    }
                    assert!(Instant::now() < deadline, "status never matched: {status}");
                }
            }
            assert!(Instant::now() < deadline, "no status from the monitor");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// What a probe printed and said.
pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
