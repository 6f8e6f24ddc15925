//! A private containerd (Debian 12's 1.6, or 2.x from `$JITSU_CONTAINERD_DIR`)
//! in a namespace of its own, with private root, state and socket, and our
//! shim on its PATH.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::netns::NetNs;
use crate::process::{run_with_timeout, Guarded};
use crate::{foreign_guest, guest, jitsu_bin};

pub struct Containerd {
    /// The node's network namespace (shared by containerds `beside` this one).
    pub ns: Arc<NetNs>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// The shim's state (`JITSU_STATE_DIR`), the node's.
    pub state: PathBuf,
    /// Where a `jitsu daemon` for this node serves XenStore.
    pub xenstore: PathBuf,
    config: Option<PathBuf>,
    process: Guarded,
}

impl Containerd {
    pub fn start() -> Containerd {
        Containerd::start_with(|_| None)
    }

    /// With `config(dir)`: a config.toml to write in the private directory.
    pub fn start_with(config: impl FnOnce(&Path) -> Option<String>) -> Containerd {
        let ns = Arc::new(NetNs::empty());
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("jitsu");
        // In a folder of its own: a jailed monitor sees the folder.
        let xenstore = dir.path().join("xenstore").join("socket");
        Containerd::launch(ns, dir, state, xenstore, config, |_| {})
    }

    /// With `prepare` applied to containerd's command (to start it, and so
    /// its shims and monitors, in a cgroup).
    pub fn start_with_pre_exec(prepare: impl Fn(&mut Command)) -> Containerd {
        let ns = Arc::new(NetNs::empty());
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("jitsu");
        // In a folder of its own: a jailed monitor sees the folder.
        let xenstore = dir.path().join("xenstore").join("socket");
        Containerd::launch(ns, dir, state, xenstore, |_| None, prepare)
    }

    /// A second containerd on the same node (as k3s's beside the system's):
    /// the same network namespace, shim state and XenStore, its own root,
    /// state and socket.
    pub fn beside(other: &Containerd) -> Containerd {
        let dir = tempfile::tempdir().unwrap();
        Containerd::launch(
            other.ns.clone(),
            dir,
            other.state.clone(),
            other.xenstore.clone(),
            |_| None,
            |_| {},
        )
    }

    fn launch(
        ns: Arc<NetNs>,
        dir: tempfile::TempDir,
        state: PathBuf,
        xenstore: PathBuf,
        config: impl FnOnce(&Path) -> Option<String>,
        prepare: impl Fn(&mut Command),
    ) -> Containerd {
        let socket = dir.path().join("containerd.sock");
        let config = with_private_paths(config(dir.path())).map(|toml| {
            let path = dir.path().join("config.toml");
            std::fs::write(&path, toml).unwrap();
            path
        });
        let mut cmd = containerd_command(
            &ns,
            dir.path(),
            &socket,
            &state,
            &xenstore,
            config.as_deref(),
        );
        prepare(&mut cmd);
        let process = Guarded::spawn(&mut cmd);
        let c = Containerd {
            ns,
            dir,
            socket,
            state,
            xenstore,
            config,
            process,
        };
        c.wait_until_up();
        c
    }

    fn wait_until_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.ctr(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "containerd did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ends containerd with SIGTERM, as a package upgrade or `systemctl
    /// restart` would, and starts it again on the same root, state and
    /// socket. The shims live on.
    pub fn restart(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.process.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        self.process.wait_timeout(Duration::from_secs(20));
        self.process = Guarded::spawn(&mut containerd_command(
            &self.ns,
            self.dir.path(),
            &self.socket,
            &self.state,
            &self.xenstore,
            self.config.as_deref(),
        ));
        self.wait_until_up();
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_in("default", args)
    }

    /// ctr in the containerd namespace `namespace` (CRI's is `k8s.io`).
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new(containerd_tool("ctr"));
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", namespace])
            .args(args);
        run_with_timeout(&mut cmd, Duration::from_secs(30))
    }

    /// Runs ctr and fails the test with its output if it fails.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        self.ctr_ok_in("default", args)
    }

    pub fn ctr_ok_in(&self, namespace: &str, args: &[&str]) -> String {
        let out = self.ctr_in(namespace, args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Packs hello-http with `pack_args` and imports it as `name`.
    pub fn import_hello(&self, name: &str, pack_args: &[&str]) {
        self.import_hello_in("default", name, pack_args);
    }

    pub fn import_hello_in(&self, namespace: &str, name: &str, pack_args: &[&str]) {
        self.import_guest_in(namespace, "hello-http", name, pack_args);
    }

    /// Packs the guest `guest` (by its name in the guest workspace, built
    /// for both architectures: containerd picks the node's) with
    /// `pack_args` and imports it into `namespace` as `name`.
    pub fn import_guest_in(
        &self,
        namespace: &str,
        guest_name: &str,
        name: &str,
        pack_args: &[&str],
    ) {
        let archive = self
            .dir
            .path()
            .join(format!("{}.tar", name.replace(['/', ':'], "_")));
        let out = Command::new(jitsu_bin())
            .args(["pack", "--kernel"])
            .arg(guest(guest_name))
            .arg("--kernel")
            .arg(foreign_guest(guest_name))
            .args(["--name", name])
            .args(pack_args)
            .arg("-o")
            .arg(&archive)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "jitsu pack: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.import(namespace, &archive);
    }

    /// Imports an image of `kernel` (any bytes: `jitsu pack` would refuse a
    /// bad ELF, a hostile image need not come from it) as `name`.
    pub fn import_kernel_bytes(&self, name: &str, kernel: &[u8]) {
        use jitsu_spec::{archive, Metadata, METADATA_FILE};
        let metadata = Metadata::new("/unikernel.elf");
        let json = metadata.to_json();
        let files = [
            archive::File {
                path: "unikernel.elf",
                mode: 0o755,
                data: kernel,
            },
            archive::File {
                path: METADATA_FILE,
                mode: 0o644,
                data: json.as_bytes(),
            },
        ];
        let reference = archive::normalize_reference(name);
        let bytes = archive::image_archive(&files, metadata.labels(), "/unikernel.elf", &reference)
            .expect("an image archive");
        let path = self.dir.path().join("image.tar");
        std::fs::write(&path, bytes).unwrap();
        self.import("default", &path);
    }

    /// Imports an image whose layer holds `entries` (files, symlinks,
    /// FIFOs, devices, holes) and `jitsu.json` naming `kernel`, as `name`.
    pub fn import_entries(&self, name: &str, kernel: &str, entries: &[jitsu_spec::archive::Entry]) {
        use jitsu_spec::archive::{self, Entry};
        use jitsu_spec::{Metadata, METADATA_FILE};
        let metadata = Metadata::new(kernel);
        let json = metadata.to_json();
        let mut all = entries.to_vec();
        let has_metadata = entries.iter().any(|e| match e {
            Entry::File(f) => f.path == METADATA_FILE,
            Entry::Symlink { path, .. }
            | Entry::Fifo { path }
            | Entry::CharDevice { path, .. }
            | Entry::Hole { path, .. } => *path == METADATA_FILE,
        });
        let json_entry = Entry::File(archive::File {
            path: METADATA_FILE,
            mode: 0o644,
            data: json.as_bytes(),
        });
        if !has_metadata {
            all.push(json_entry);
        }
        let reference = archive::normalize_reference(name);
        let bytes = archive::image_archive_of(&all, Default::default(), kernel, &reference)
            .expect("an image archive");
        let path = self.dir.path().join("entries.tar");
        std::fs::write(&path, bytes).unwrap();
        self.import("default", &path);
    }

    /// `ctr images import` of an OCI archive into `namespace`.
    pub fn import(&self, namespace: &str, archive: &Path) {
        let out = self.ctr_in(namespace, &["images", "import", archive.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "importing {}: {}",
            archive.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// What containerd has logged so far (its shims' logs included).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// `RUNNING`, `STOPPED`, ... or None when the task is gone.
    pub fn task_status(&self, id: &str) -> Option<String> {
        self.task_status_in("default", id)
    }

    pub fn task_status_in(&self, namespace: &str, id: &str) -> Option<String> {
        let list = self.ctr_ok_in(namespace, &["task", "ls"]);
        list.lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2))
            .map(str::to_string)
    }

    /// `ctr run -d` of `image` as `id` with our runtime; `extra` before the image.
    pub fn run_jitsu(&self, image: &str, id: &str, extra: &[&str]) -> Output {
        self.run_jitsu_in("default", image, id, extra)
    }

    pub fn run_jitsu_in(&self, namespace: &str, image: &str, id: &str, extra: &[&str]) -> Output {
        let mut args = vec!["run", "-d", "--runtime", "io.containerd.jitsu.v1"];
        args.extend_from_slice(extra);
        args.extend([image, id]);
        self.ctr_in(namespace, &args)
    }

    pub fn run_jitsu_ok(&self, image: &str, id: &str, extra: &[&str]) {
        self.run_jitsu_ok_in("default", image, id, extra);
    }

    pub fn run_jitsu_ok_in(&self, namespace: &str, image: &str, id: &str, extra: &[&str]) {
        let out = self.run_jitsu_in(namespace, image, id, extra);
        assert!(
            out.status.success(),
            "ctr run {id}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `task kill` (with `signal`), wait until it stops, `task delete`,
    /// `container delete`, failing the test if any step fails.
    pub fn remove(&self, id: &str, signal: &str) {
        self.remove_in("default", id, signal);
    }

    pub fn remove_in(&self, namespace: &str, id: &str, signal: &str) {
        let ctr_ok = |args: &[&str]| self.ctr_ok_in(namespace, args);
        ctr_ok(&["task", "kill", "-s", signal, id]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.task_status_in(namespace, id).as_deref() != Some("STOPPED") {
            assert!(
                Instant::now() < deadline,
                "task {namespace}/{id} did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        ctr_ok(&["task", "delete", id]);
        ctr_ok(&["container", "delete", id]);
    }

    /// `jitsu daemon` for this node: XenStore at `self.xenstore`, DNS on
    /// 127.0.0.1:53 of the namespace. Ends when the returned guard drops.
    pub fn start_daemon(&self) -> Guarded {
        let mut cmd = self.ns.command(jitsu_bin());
        cmd.args([
            "daemon",
            "--dns-listen",
            "127.0.0.1:53",
            "--xenstore-listen",
        ])
        .arg(&self.xenstore)
        .stderr(Stdio::null());
        let daemon = Guarded::spawn(&mut cmd);
        crate::wait_until("XenStore", || {
            std::os::unix::net::UnixStream::connect(&self.xenstore).is_ok()
        });
        daemon
    }

    /// `jitsu ps --json` against this node's XenStore.
    pub fn ps(&self) -> serde_json::Value {
        let out = Command::new(jitsu_bin())
            .args(["ps", "--json", "--xenstore-socket"])
            .arg(&self.xenstore)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// The `status` of container `id`'s monitor, from its control socket.
    pub fn monitor_status(&self, id: &str) -> serde_json::Value {
        let reply = crate::lazy::try_request(&self.control(id), "status")
            .unwrap_or_else(|e| panic!("status of {id}'s monitor: {e}"));
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{reply:?}: {e}"))
    }

    /// The control socket of container `id`'s monitor (in whichever
    /// containerd namespace holds an `id`; see `control_in`).
    pub fn control(&self, id: &str) -> PathBuf {
        let mut found = self
            .records()
            .into_iter()
            .filter(|(_, r)| r["key"]["id"] == id);
        let (dir, _) = found
            .next()
            .unwrap_or_else(|| panic!("no container {id} in the shim's state"));
        assert!(found.next().is_none(), "{id} is in more than one namespace");
        dir.join("control.sock")
    }

    pub fn control_in(&self, namespace: &str, id: &str) -> PathBuf {
        self.record(namespace, id)
            .unwrap_or_else(|| panic!("no container {namespace}/{id} in the shim's state"))
            .0
            .join("control.sock")
    }

    /// The shim's record of container `namespace/id`, and its directory.
    pub fn record(&self, namespace: &str, id: &str) -> Option<(PathBuf, serde_json::Value)> {
        self.records()
            .into_iter()
            .find(|(_, r)| r["key"]["namespace"] == namespace && r["key"]["id"] == id)
    }

    /// The records the shim keeps (`containers/<key>/state.json`) of this
    /// containerd's containers (the node's state may hold others').
    pub fn records(&self) -> Vec<(PathBuf, serde_json::Value)> {
        let Ok(dirs) = std::fs::read_dir(self.state.join("containers")) else {
            return Vec::new();
        };
        let me = self.socket.display().to_string();
        dirs.flatten()
            .filter_map(|d| {
                let json = std::fs::read(d.path().join("state.json")).ok()?;
                let record: serde_json::Value = serde_json::from_slice(&json).ok()?;
                (record["key"]["containerd"] == me.as_str()).then(|| (d.path(), record))
            })
            .collect()
    }

    /// The pid of the shim of container `id` of this containerd.
    pub fn shim_pid(&self, id: &str) -> i32 {
        let pattern = format!(
            "containerd-shim-jitsu-v1.*-id {id}.*{}",
            self.socket.display()
        );
        let found = Command::new("pgrep")
            .args(["-f", &pattern])
            .output()
            .unwrap();
        String::from_utf8_lossy(&found.stdout)
            .lines()
            .next()
            .expect("the shim's pid")
            .trim()
            .parse()
            .unwrap()
    }

    /// The address the shim gave container `namespace/id` (on the node's
    /// bridge, or its pod's).
    pub fn address_of(&self, namespace: &str, id: &str) -> String {
        let (_, record) = self
            .record(namespace, id)
            .unwrap_or_else(|| panic!("no record of {namespace}/{id}"));
        let network = &record["network"];
        ["Bridge", "Pod"]
            .iter()
            .find_map(|kind| network[kind]["ip"].as_str())
            .map(str::to_string)
            .or_else(|| network["Pod"]["link"]["ip"].as_str().map(str::to_string))
            .unwrap_or_else(|| panic!("no address in {network}"))
    }

    /// The page at `url`, fetched from the node's namespace.
    pub fn fetch(&self, url: &str) -> String {
        let mut cmd = self.ns.command("curl");
        cmd.args(["-sS", "--max-time", "10", url]);
        let out = run_with_timeout(&mut cmd, Duration::from_secs(20));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `xenstore-ls PATH` of this node's XenStore.
    pub fn xenstore_ls(&self, path: &str) -> String {
        let out = Command::new("xenstore-ls")
            .env("XENSTORED_PATH", &self.xenstore)
            .arg(path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Interfaces in the namespace.
    pub fn links(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-n", self.ns.name(), "-o", "link", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.split(": ")
                    .nth(1)
                    .map(|n| n.split('@').next().unwrap_or(n).to_string())
            })
            .collect()
    }

    /// Files left in the shim's state, except its empty folders for
    /// address leases and containers.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.state, &mut out);
        // The lease folders stay; their leases must not.
        let folders = ["ipam", "containers", "uids", "conduit"].map(|f| self.state.join(f));
        out.retain(|p| !folders.contains(p));
        out
    }
}

/// containerd in the node's namespace, with our shim on its PATH.
fn containerd_command(
    ns: &NetNs,
    dir: &Path,
    socket: &Path,
    state: &Path,
    xenstore: &Path,
    config: Option<&Path>,
) -> Command {
    let bin_dir = jitsu_bin().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // nsenter, not `ip netns exec`: only the network namespace changes,
    // so the cgroup mounts runc needs stay visible.
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", ns.name()))
        .arg(containerd_tool("containerd"))
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--state")
        .arg(dir.join("state"))
        .arg("--address")
        .arg(socket);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    cmd.env("PATH", path)
        .env("JITSU_STATE_DIR", state)
        .env("XENSTORED_PATH", xenstore)
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("JITSU_TEST_VERBOSE").is_some() {
            Stdio::inherit()
        } else {
            // containerd's log, where its shims' logs go too.
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("containerd.log"))
                .expect("containerd's log");
            Stdio::from(log)
        });
    cmd
}

/// containerd 2.x serves NRI on one socket for the whole machine
/// (`/var/run/nri/nri.sock`): tests' containerds side by side would fight
/// over it, so theirs is off (1.6 has none).
fn with_private_paths(config: Option<String>) -> Option<String> {
    if containerd_major() < 2 {
        return config;
    }
    let nri_off = "[plugins.\"io.containerd.nri.v1.nri\"]\n  disable = true\n";
    Some(match config {
        Some(toml) => format!("{toml}{nri_off}"),
        None => format!("version = 3\n{nri_off}"),
    })
}

/// `containerd` or `ctr` of the containerd under test: from
/// `$JITSU_CONTAINERD_DIR` (containerd 2.x, unpacked by
/// `scripts/fetch-containerd2.sh`), else the system's (Debian 12's 1.6).
pub fn containerd_tool(name: &str) -> PathBuf {
    match std::env::var_os("JITSU_CONTAINERD_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join(name),
        None => PathBuf::from(name),
    }
}

/// The major version of the containerd under test (1 or 2).
pub fn containerd_major() -> u32 {
    static MAJOR: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *MAJOR.get_or_init(|| {
        let out = Command::new(containerd_tool("containerd"))
            .arg("--version")
            .output()
            .expect("containerd --version");
        let text = String::from_utf8_lossy(&out.stdout);
        // "containerd github.com/containerd/containerd/v2 2.1.9 ..." or
        // "containerd github.com/containerd/containerd 1.6.20~ds1 ...".
        text.split_whitespace()
            .nth(2)
            .and_then(|v| v.trim_start_matches('v').split('.').next()?.parse().ok())
            .unwrap_or_else(|| panic!("cannot tell containerd's version from {text:?}"))
    })
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            out.push(e.path());
            walk(&e.path(), out);
        }
    }
}

impl Drop for Containerd {
    /// Shims outlive containerd by design; take every container down first,
    /// then anything of ours that is still running, so no test leaves a
    /// shim, a monitor or a mount behind.
    fn drop(&mut self) {
        let namespaces = self.ctr(&["namespaces", "ls", "-q"]);
        for namespace in String::from_utf8_lossy(&namespaces.stdout).split_whitespace() {
            let ctr = |args: &[&str]| self.ctr_in(namespace, args);
            let tasks = ctr(&["task", "ls", "-q"]);
            for id in String::from_utf8_lossy(&tasks.stdout).split_whitespace() {
                let _ = ctr(&["task", "kill", "-s", "SIGKILL", id]);
            }
            std::thread::sleep(Duration::from_millis(100));
            for id in String::from_utf8_lossy(&tasks.stdout).split_whitespace() {
                let _ = ctr(&["task", "delete", "-f", id]);
            }
            let containers = ctr(&["container", "ls", "-q"]);
            for id in String::from_utf8_lossy(&containers.stdout).split_whitespace() {
                let _ = ctr(&["container", "delete", id]);
            }
        }
        let _ = Command::new("pkill")
            .args(["-9", "-f", &self.socket.display().to_string()])
            .status();
        if let Ok(mounts) = std::fs::read_to_string("/proc/mounts") {
            let dir = self.dir.path().display().to_string();
            for target in mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|t| t.starts_with(&dir))
            {
                let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}
