//! One container: its unikernel spec, its network, its monitor process, and
//! what is left on disk (so a later `shim delete` can clean up after a shim
//! that was killed).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use containerd_shim::asynchronous::monitor::{monitor_subscribe, monitor_unsubscribe};
use containerd_shim::monitor::{Subject, Topic};
use jitsu_runtime::spec::{BootPolicy, Metadata, UnikernelSpec, METADATA_FILE};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::network::{self, Ipam, GATEWAY, PREFIX};

/// Where shim state lives: `$JITSU_STATE_DIR`, else `/run/jitsu`.
pub fn state_dir() -> PathBuf {
    std::env::var_os("JITSU_STATE_DIR").map_or_else(|| PathBuf::from("/run/jitsu"), PathBuf::from)
}

/// What must be undone for a container, kept in `<state>/<id>/state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs_mounted: bool,
    pub tap: String,
    pub ip: Ipv4Addr,
    pub monitor_pid: Option<u32>,
    pub dns_name: Option<String>,
}

impl Record {
    fn path(id: &str) -> PathBuf {
        state_dir().join(id).join("state.json")
    }

    pub fn save(&self) -> std::io::Result<()> {
        let path = Record::path(&self.id);
        std::fs::create_dir_all(path.parent().expect("has a parent"))?;
        std::fs::write(path, serde_json::to_vec(self)?)
    }

    pub fn load(id: &str) -> Option<Record> {
        serde_json::from_slice(&std::fs::read(Record::path(id)).ok()?).ok()
    }

    /// Undoes everything: the monitor, the TAP, the address, the rootfs
    /// mount, the registry entry and the state files. Safe to repeat.
    pub async fn clean_up(&self) {
        if let Some(pid) = self.monitor_pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Err(e) = network::unplug_tap(&self.tap).await {
            tracing::warn!(%e, "removing the TAP");
        }
        Ipam::new(&state_dir()).release(self.ip);
        if self.rootfs_mounted {
            let _ = nix::mount::umount2(
                &self.bundle.join("rootfs"),
                nix::mount::MntFlags::MNT_DETACH,
            );
        }
        if let Some(name) = &self.dns_name {
            // A monitor killed outright could not remove its own entry.
            let socket = jitsu_xenstore::server::default_socket_path();
            if let Ok(Ok(client)) = tokio::time::timeout(
                std::time::Duration::from_millis(500),
                jitsu_xenstore::Client::connect(&socket),
            )
            .await
            {
                let _ = tokio::time::timeout(
                    std::time::Duration::from_millis(500),
                    jitsu_xenstore::registry::remove(&client, name),
                )
                .await;
            }
        }
        let _ = std::fs::remove_dir_all(state_dir().join(&self.id));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Stopped,
}

/// How the monitor ended: exit status and when.
pub type Exit = Option<(u32, std::time::SystemTime)>;

pub struct Container {
    pub record: Record,
    pub spec: UnikernelSpec,
    pub status: Status,
    pub pid: u32,
    pub stdout: String,
    pub stderr: String,
    pub exit: watch::Receiver<Exit>,
    pub control: PathBuf,
}

/// Reads the image metadata from the rootfs and applies the container's
/// `org.jitsu.*` annotations.
pub fn read_spec(bundle: &Path) -> Result<UnikernelSpec, String> {
    let metadata_path = bundle.join("rootfs").join(METADATA_FILE);
    let json = std::fs::read(&metadata_path).map_err(|e| {
        format!(
            "{}: {e} (is this a Jitsu image? build it with `jitsu pack`)",
            metadata_path.display()
        )
    })?;
    let mut metadata = Metadata::parse(&json).map_err(|e| e.to_string())?;
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(bundle.join("config.json")).map_err(|e| format!("config.json: {e}"))?,
    )
    .map_err(|e| format!("config.json: {e}"))?;
    let annotations: std::collections::BTreeMap<String, String> = config["annotations"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    metadata
        .apply_annotations(&annotations)
        .map_err(|e| e.to_string())?;
    metadata.validate().map_err(|e| e.to_string())
}

/// The `jitsu` binary: `$JITSU_BIN`, else next to the shim, else on PATH.
fn jitsu_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("JITSU_BIN") {
        return PathBuf::from(bin);
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.join("jitsu")));
    sibling
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("jitsu"))
}

fn stdio(path: &str) -> Result<Stdio, String> {
    if path.is_empty() {
        return Ok(Stdio::null());
    }
    // Read-write so that opening a FIFO never waits for its reader.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))?;
    Ok(Stdio::from(file))
}

impl Container {
    /// Parks the unikernel: network, monitor (`jitsu run --lazy`), no guest
    /// instruction yet.
    pub async fn create(
        id: &str,
        bundle: &Path,
        spec: UnikernelSpec,
        rootfs_mounted: bool,
        stdout: &str,
        stderr: &str,
    ) -> Result<Container, String> {
        let ipam = Ipam::new(&state_dir());
        let ip = ipam.allocate(id)?;
        let tap = format!(
            "jt{}",
            &id.chars()
                .filter(char::is_ascii_alphanumeric)
                .take(12)
                .collect::<String>()
        );
        let mut record = Record {
            id: id.into(),
            bundle: bundle.into(),
            rootfs_mounted,
            tap: tap.clone(),
            ip,
            monitor_pid: None,
            dns_name: spec.dns_name.clone(),
        };
        record.save().map_err(|e| format!("saving state: {e}"))?;
        if let Err(e) = network::plug_tap(&tap).await {
            record.clean_up().await;
            return Err(e);
        }
        let control = state_dir().join(id).join("control.sock");
        let mut cmd = std::process::Command::new(jitsu_bin());
        cmd.args(["run", "--lazy", "--die-with-parent", "--mem"])
            .arg(spec.mem.to_string())
            .arg("--control")
            .arg(&control)
            .args([
                "--net",
                &tap,
                "--ip",
                &format!("{ip}/{PREFIX}"),
                "--gw",
                &GATEWAY.to_string(),
            ]);
        if let Some(t) = spec.idle_timeout {
            cmd.arg("--idle-timeout")
                .arg(format!("{}ms", t.as_millis()));
        }
        if let Some(name) = &spec.dns_name {
            cmd.args(["--name", name]);
        }
        cmd.arg(bundle.join("rootfs").join(&spec.kernel));
        if !spec.cmdline.is_empty() {
            cmd.arg("--").args(spec.cmdline.split_whitespace());
        }
        // The shim reaps every child itself (it is a subreaper); our exit
        // status comes from its monitor. Subscribe before the child exists so
        // that not even an immediate exit is missed.
        let mut exits = match monitor_subscribe(Topic::Pid).await {
            Ok(s) => s,
            Err(e) => {
                record.clean_up().await;
                return Err(format!("subscribing to exits: {e}"));
            }
        };
        let spawned = stdio(stdout).and_then(|out| {
            let err = stdio(stderr)?;
            cmd.stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .map_err(|e| format!("starting the monitor: {e}"))
        });
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                record.clean_up().await;
                return Err(e);
            }
        };
        let pid = child.id();
        record.monitor_pid = Some(pid);
        let _ = record.save();
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            while let Some(event) = exits.rx.recv().await {
                if matches!(event.subject, Subject::Pid(p) if p == pid as i32) {
                    let _ = tx.send(Some((event.exit_code as u32, std::time::SystemTime::now())));
                    break;
                }
            }
            let _ = monitor_unsubscribe(exits.id).await;
        });
        Ok(Container {
            record,
            spec,
            status: Status::Created,
            pid,
            stdout: stdout.into(),
            stderr: stderr.into(),
            exit: rx,
            control,
        })
    }

    /// Lets it run: lazy ones stay parked until traffic, eager ones boot now.
    pub async fn start(&mut self) -> Result<(), String> {
        if self.spec.boot == BootPolicy::Eager {
            let control = self.control.clone();
            // The monitor may still be binding its control socket.
            let mut last = String::new();
            for _ in 0..200 {
                match tokio::task::spawn_blocking({
                    let c = control.clone();
                    move || jitsu_runtime::lazy::control::request(&c, "boot")
                })
                .await
                {
                    Ok(Ok(_)) => {
                        last.clear();
                        break;
                    }
                    Ok(Err(e)) => last = e.to_string(),
                    Err(e) => last = e.to_string(),
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            if !last.is_empty() {
                return Err(format!("eager boot: {last}"));
            }
        }
        self.status = Status::Running;
        Ok(())
    }

    pub fn exit_now(&self) -> Exit {
        *self.exit.borrow()
    }
}
