//! The shim on Xen: Debian's containerd in dom0, with our shim, runs
//! unikernel images as Xen domains (`ctr run`, as a user of the node would).
//! containerd runs in dom0's own network namespace: a vif is made where
//! netback lives, and the test bed's dom0 is this test's machine alone.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use jitsu_e2e::http::get;
use libtest_mimic::Failed;

use crate::{env_path, leaves_nothing, our_domains, text, xenstore, Result, TIMEOUT};

const RUNTIME: &str = "io.containerd.jitsu.v1";

/// containerd with private root, state and socket, our shim on its PATH.
pub(crate) struct Dom0Containerd {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) socket: PathBuf,
    state: PathBuf,
    process: std::process::Child,
}

impl Dom0Containerd {
    fn start() -> std::result::Result<Dom0Containerd, Failed> {
        Dom0Containerd::start_with(|_| Ok(None))
    }

    /// With the config `config` writes into containerd's folder, if any.
    pub(crate) fn start_with(
        config: impl FnOnce(&Path) -> std::result::Result<Option<String>, Failed>,
    ) -> std::result::Result<Dom0Containerd, Failed> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("containerd.sock");
        let state = dir.path().join("jitsu");
        let bin = env_path("JITSU_BIN");
        let path = format!(
            "{}:{}",
            bin.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("containerd");
        cmd.arg("--root")
            .arg(dir.path().join("root"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--address")
            .arg(&socket)
            .env("PATH", path)
            .env("JITSU_STATE_DIR", &state)
            .stdout(Stdio::null())
            // containerd's log, its shims' included.
            .stderr(std::fs::File::create(dir.path().join("containerd.log"))?);
        if let Some(toml) = config(dir.path())? {
            let file = dir.path().join("config.toml");
            std::fs::write(&file, toml)?;
            cmd.arg("--config").arg(file);
        }
        let c = Dom0Containerd {
            process: cmd.spawn()?,
            dir,
            socket,
            state,
        };
        let deadline = Instant::now() + TIMEOUT;
        while !c.ctr(&["version"])?.status.success() {
            if Instant::now() > deadline {
                return Err("containerd did not come up".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(c)
    }

    /// The shim's state folder (`JITSU_STATE_DIR`).
    pub(crate) fn state(&self) -> &Path {
        &self.state
    }

    pub(crate) fn ctr(&self, args: &[&str]) -> std::result::Result<Output, Failed> {
        Ok(Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()?)
    }

    pub(crate) fn ctr_ok(&self, args: &[&str]) -> std::result::Result<String, Failed> {
        let out = self.ctr(args)?;
        if !out.status.success() {
            return Err(format!("ctr {args:?}: {}{}", text(&out.stdout), text(&out.stderr)).into());
        }
        Ok(text(&out.stdout))
    }

    /// `jitsu pack` of `kernels` (its --kernel / --xen-kernel options and
    /// files) and `extra`, imported as `name`.
    fn import(&self, name: &str, kernels: &[(&str, PathBuf)], extra: &[&str]) -> Result {
        self.import_in("default", name, kernels, extra)
    }

    /// [`Dom0Containerd::import`] into containerd's `namespace`.
    pub(crate) fn import_in(
        &self,
        namespace: &str,
        name: &str,
        kernels: &[(&str, PathBuf)],
        extra: &[&str],
    ) -> Result {
        let archive = self
            .dir
            .path()
            .join(format!("{}.tar", name.replace([':', '/'], "_")));
        let mut pack = Command::new(env_path("JITSU_BIN"));
        pack.args(["pack", "--name", name]);
        for (option, file) in kernels {
            pack.arg(option).arg(file);
        }
        let out = pack.args(extra).arg("-o").arg(&archive).output()?;
        if !out.status.success() {
            return Err(format!("jitsu pack: {}", text(&out.stderr)).into());
        }
        self.ctr_ok(&[
            "-n",
            namespace,
            "images",
            "import",
            archive.to_str().unwrap(),
        ])?;
        Ok(())
    }

    /// `ctr run -d` of `image` as `id` with our runtime.
    fn run_jitsu(&self, image: &str, id: &str) -> Result {
        self.ctr_ok(&["run", "-d", "--runtime", RUNTIME, image, id])
            .map(drop)
    }

    fn task_status(&self, id: &str) -> Option<String> {
        let list = self.ctr(&["task", "ls"]).ok()?;
        text(&list.stdout)
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2))
            .map(String::from)
    }

    /// kill, wait until STOPPED, delete the task and the container.
    fn remove(&self, id: &str) -> Result {
        self.ctr_ok(&["task", "kill", id])?;
        let deadline = Instant::now() + TIMEOUT;
        while self.task_status(id).as_deref() != Some("STOPPED") {
            if Instant::now() > deadline {
                return Err(format!("task {id} did not stop").into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.ctr_ok(&["task", "delete", id])?;
        self.ctr_ok(&["container", "delete", id])?;
        Ok(())
    }

    /// Files in the shim's state, but for its (empty) lease folders.
    fn leftovers(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.state, &mut out);
        let folders = ["ipam", "containers", "uids"].map(|f| self.state.join(f));
        out.retain(|p| !folders.contains(p));
        out
    }

    /// A test's `result`, with containerd's log if it failed; then, that
    /// the shim left no file behind.
    pub(crate) fn verdict(&self, result: Result) -> Result {
        let leftovers = self.leftovers();
        if let Err(e) = result {
            let why = e.message().unwrap_or_default();
            return Err(format!("{why}\ncontainerd's log:\n{}", self.log()).into());
        }
        if !leftovers.is_empty() {
            return Err(format!("the shim left {leftovers:?}").into());
        }
        Ok(())
    }

    /// containerd's log, but for its start-up (the shim's lines and errors).
    fn log(&self) -> String {
        let all =
            std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        all.lines()
            .filter(|l| !l.contains("loading plugin") && !l.contains("level=info"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Dom0Containerd {
    fn drop(&mut self) {
        // Whatever a failed test left: its tasks first, then containerd.
        if let Ok(tasks) = self.ctr(&["task", "ls", "-q"]) {
            for id in text(&tasks.stdout).split_whitespace() {
                let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", id]);
                let _ = self.ctr(&["task", "delete", "-f", id]);
                let _ = self.ctr(&["container", "delete", id]);
            }
        }
        let pid = nix::unistd::Pid::from_raw(self.process.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.process.wait();
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            out.push(e.path());
            walk(&e.path(), out);
        }
    }
}

/// The domain of container `id` (the shim names it `jitsu-<ip>-<id>`, the
/// id cut to 40 characters): its address, its domain id and its `xl list`
/// state flags.
pub(crate) fn domain_of(id: &str) -> Option<(Ipv4Addr, u32, String)> {
    let id: String = id.chars().take(40).collect();
    let out = Command::new("xl").arg("list").output().ok()?;
    text(&out.stdout).lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let name = f.first()?.strip_prefix("jitsu-")?;
        let (ip, rest) = name.split_once('-')?;
        (rest == id && f.len() >= 5)
            .then(|| Some((ip.parse().ok()?, f[1].parse().ok()?, f[4].to_string())))
            .flatten()
    })
}

pub(crate) fn await_domain(
    id: &str,
    pred: impl Fn(&(Ipv4Addr, u32, String)) -> bool,
) -> std::result::Result<(Ipv4Addr, u32, String), Failed> {
    let deadline = Instant::now() + TIMEOUT;
    let mut last = None;
    while Instant::now() < deadline {
        last = domain_of(id);
        if let Some(d) = last.as_ref().filter(|d| pred(d)) {
            return Ok(d.clone());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("container {id}'s domain never got there; last {last:?}").into())
}

pub(crate) fn hello_xen() -> PathBuf {
    crate::guest("hello-http")
}

/// `ctr run` parks the hello image as a paused domain; curl from dom0 boots
/// it (one SYN); idle, it is parked again (a fresh domain) while the task
/// stays RUNNING; kill and delete leave no domain, vif, XenStore entry or file.
pub fn ctr_run_parks_a_domain_that_curl_boots_and_idleness_parks_again() -> Result {
    let containerd = Dom0Containerd::start()?;
    let result = leaves_nothing(|| {
        let name = format!("xc{}", std::process::id());
        containerd.import(
            "localhost/jitsu/hello-xen:1",
            &[("--xen-kernel", hello_xen())],
            &["--idle-timeout", "2s", "--dns-name", &name],
        )?;
        containerd.run_jitsu("localhost/jitsu/hello-xen:1", "hx")?;
        let (ip, first, flags) = await_domain("hx", |_| true)?;
        if !flags.contains('p') || containerd.task_status("hx").as_deref() != Some("RUNNING") {
            return Err(format!(
                "after ctr run: domain {flags:?}, task {:?}",
                containerd.task_status("hx")
            )
            .into());
        }
        let (reply, retrans) = get(SocketAddr::from((ip, 80)));
        if !reply.starts_with("HTTP/1.1 200") || retrans != 0 {
            return Err(format!("curl: {retrans} retransmissions, {reply:?}").into());
        }
        let registered = xenstore(&["xenstore-ls", "-f", &format!("/jitsu/services/{name}")])?;
        if !registered.contains("hypervisor = \"xen\"") {
            return Err(format!("the registry entry: {registered}").into());
        }
        // Idle: a fresh domain, paused, and the task still RUNNING. Parked
        // is when the monitor says so (the registry shows the new domain);
        // the domain shows in `xl list` while libxl is still building it.
        let entry =
            |key: &str| xenstore(&["xenstore-read", &format!("/jitsu/services/{name}/{key}")]);
        let deadline = Instant::now() + TIMEOUT;
        let again = loop {
            let domid = entry("domid")
                .ok()
                .and_then(|d| d.trim().parse::<u32>().ok());
            let parked = entry("state").is_ok_and(|s| s.trim() == "parked");
            match domid {
                Some(domid) if parked && domid != first => break domid,
                _ if Instant::now() > deadline => return Err("never parked again".into()),
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        if domain_of("hx").map(|(_, id, flags)| (id, flags.contains('p'))) != Some((again, true)) {
            return Err(format!(
                "the registry says domain {again}, xl says {:?}",
                domain_of("hx")
            )
            .into());
        }
        if containerd.task_status("hx").as_deref() != Some("RUNNING") {
            return Err("the task did not stay RUNNING across the idle parking".into());
        }
        let (reply, retrans) = get(SocketAddr::from((ip, 80)));
        if !reply.starts_with("HTTP/1.1 200") || retrans != 0 {
            return Err(format!(
                "after the idle parking (domain {again}): {retrans} retransmissions, {reply:?}"
            )
            .into());
        }
        containerd.remove("hx")?;
        let entry = xenstore(&["xenstore-ls", "-f", "/jitsu/services"]).unwrap_or_default();
        if entry.contains(&name) {
            return Err(format!("the registry entry outlived the container: {entry}").into());
        }
        Ok(())
    });
    containerd.verdict(result)
}

/// One image with both builds runs as a Xen domain here; an image that
/// requires KVM (by annotation, or built for KVM alone) is refused by name.
pub fn the_node_picks_xen_from_an_image_with_both_builds_and_refuses_kvm_ones() -> Result {
    let containerd = Dom0Containerd::start()?;
    leaves_nothing(|| {
        let kvm = env_path("JITSU_KVM_GUESTS").join("hello-http");
        containerd.import(
            "localhost/jitsu/hello-both:1",
            &[("--kernel", kvm.clone()), ("--xen-kernel", hello_xen())],
            &[],
        )?;
        containerd.run_jitsu("localhost/jitsu/hello-both:1", "hb")?;
        let (ip, _, _) = await_domain("hb", |_| true)?;
        let (reply, _) = get(SocketAddr::from((ip, 80)));
        if !reply.starts_with("HTTP/1.1 200") {
            return Err(format!("the Xen build did not answer: {reply:?}").into());
        }
        containerd.remove("hb")?;
        let refused = containerd.ctr(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "--annotation",
            "org.jitsu.hypervisor=kvm",
            "localhost/jitsu/hello-both:1",
            "hk",
        ])?;
        let said = text(&refused.stderr);
        if refused.status.success() || !said.contains("requires KVM") {
            return Err(format!("org.jitsu.hypervisor=kvm on a Xen node: {said}").into());
        }
        let _ = containerd.ctr(&["container", "delete", "hk"]);
        containerd.import("localhost/jitsu/hello-kvm:1", &[("--kernel", kvm)], &[])?;
        let refused = containerd.ctr(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            "localhost/jitsu/hello-kvm:1",
            "hk2",
        ])?;
        let said = text(&refused.stderr);
        if refused.status.success() || !said.contains("requires KVM") {
            return Err(format!("a KVM-only image on a Xen node: {said}").into());
        }
        let _ = containerd.ctr(&["container", "delete", "hk2"]);
        if !our_domains().is_empty() {
            return Err(format!("a refused container left {:?}", our_domains()).into());
        }
        Ok(())
    })
}

/// A monitor killed outright cannot destroy its domain: the shim's cleanup
/// at `task delete` does, by name, and frees the address only then.
pub fn the_domain_of_a_killed_monitor_goes_at_delete() -> Result {
    let containerd = Dom0Containerd::start()?;
    let result = leaves_nothing(|| {
        containerd.import(
            "localhost/jitsu/hello-xen:2",
            &[("--xen-kernel", hello_xen())],
            &[],
        )?;
        containerd.run_jitsu("localhost/jitsu/hello-xen:2", "hkill")?;
        let (ip, _, _) = await_domain("hkill", |_| true)?;
        let name = format!("jitsu-{ip}-hkill");
        let found = Command::new("pgrep")
            .args(["-f", &format!("jitsu-xen-monitor.*--domain-name {name}")])
            .output()?;
        let pid: i32 = text(&found.stdout)
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or("no monitor for the domain")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        let deadline = Instant::now() + TIMEOUT;
        while containerd.task_status("hkill").as_deref() != Some("STOPPED") {
            if Instant::now() > deadline {
                return Err("the task did not stop with its monitor".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if domain_of("hkill").is_none() {
            return Err("the domain went with its monitor: nothing left to test".into());
        }
        containerd.ctr_ok(&["task", "delete", "hkill"])?;
        containerd.ctr_ok(&["container", "delete", "hkill"])?;
        Ok(())
    });
    containerd.verdict(result)
}
