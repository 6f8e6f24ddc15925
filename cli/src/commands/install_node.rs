//! `jitsu install-node`: what the node installer DaemonSet runs on each
//! node, from a container that sees the host's root at `--host-root`.
//! Copies `jitsu` and the shim to the host, adds the `jitsu` runtime to
//! containerd's CRI config (or to k3s's `config.toml.tmpl`) and restarts
//! containerd only when the config changed. Running it again changes nothing.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

const SHIM: &str = "containerd-shim-jitsu-v1";
/// What a node needs of ours: the tool, the monitor it and the shim exec,
/// and the shim.
pub const NODE_BINARIES: [&str; 3] = ["jitsu", "jitsu-monitor", SHIM];
const K3S_CONTAINERD: &str = "var/lib/rancher/k3s/agent/etc/containerd";
/// The runtime's table in containerd's config, version 2 (containerd 1.x)
/// and version 3 (containerd 2.x).
const TABLE_V2: &str = r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.jitsu]"#;
const TABLE_V3: &str = r#"[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.jitsu]"#;

#[derive(Args)]
pub struct InstallNodeArgs {
    /// Where the host's root filesystem is mounted.
    #[arg(long, default_value = "/host")]
    host_root: PathBuf,
    /// Where on the host the binaries go.
    #[arg(long, default_value = "/usr/local/bin")]
    bin_dir: PathBuf,
    /// Do not restart containerd (or k3s) after changing its config.
    #[arg(long)]
    no_restart: bool,
}

pub fn run(args: InstallNodeArgs) -> Result<u8> {
    let bin_dir = args
        .host_root
        .join(args.bin_dir.strip_prefix("/").unwrap_or(&args.bin_dir));
    let me = std::env::current_exe().context("finding this binary")?;
    let from = me.parent().context("this binary's folder")?;
    for name in NODE_BINARIES {
        let changed = install_file(&from.join(name), &bin_dir.join(name))?;
        report(changed, &bin_dir.join(name));
    }
    let config = containerd_config(&args.host_root)?;
    let before = std::fs::read(&config.path).ok();
    let changed = add_runtime(&config)?;
    report(changed, &config.path);
    if changed && !args.no_restart {
        if let Err(e) = restart_containerd(config.is_k3s()) {
            // Put the config back, so that the next run changes it again
            // and retries the restart, instead of finding nothing to do.
            match before {
                Some(old) => std::fs::write(&config.path, old)?,
                None => std::fs::remove_file(&config.path)?,
            }
            return Err(e.context(format!("{} is unchanged", config.path.display())));
        }
    }
    Ok(0)
}

fn report(changed: bool, path: &Path) {
    let what = if changed { "updated" } else { "unchanged" };
    println!("{what}: {}", path.display());
}

/// Copies `from` to `to` unless `to` already has the same bytes; writes
/// beside it and renames, so a running shim's binary is never half-written.
fn install_file(from: &Path, to: &Path) -> Result<bool> {
    let bytes = std::fs::read(from).with_context(|| format!("{}", from.display()))?;
    if std::fs::read(to).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    let dir = to.parent().context("a target folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    let partial = to.with_extension("partial");
    std::fs::write(&partial, &bytes).with_context(|| format!("{}", partial.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&partial, to).with_context(|| format!("{}", to.display()))?;
    Ok(true)
}

struct ContainerdConfig {
    path: PathBuf,
    /// What to start the template from when it does not exist yet: k3s
    /// generates its config.toml at every start; its template is what lasts.
    base: Option<PathBuf>,
}

impl ContainerdConfig {
    fn is_k3s(&self) -> bool {
        self.base.is_some()
    }
}

fn containerd_config(root: &Path) -> Result<ContainerdConfig> {
    let k3s = root.join(K3S_CONTAINERD);
    if k3s.is_dir() {
        return Ok(ContainerdConfig {
            path: k3s.join("config.toml.tmpl"),
            base: Some(k3s.join("config.toml")),
        });
    }
    Ok(ContainerdConfig {
        path: root.join("etc/containerd/config.toml"),
        base: None,
    })
}

/// Appends the runtime's table unless the config has it; true if it changed.
fn add_runtime(config: &ContainerdConfig) -> Result<bool> {
    let path = &config.path;
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match &config.base {
            Some(base) => std::fs::read_to_string(base).with_context(|| {
                format!("{} (k3s writes it at its first start)", base.display())
            })?,
            None => "version = 2\n".to_string(),
        },
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    };
    if has_runtime(&text) {
        return Ok(false);
    }
    let version = match config_version(&text) {
        Ok(v) => v,
        // A k3s template that extends k3s's own config (`{{ template "base" . }}`)
        // has no version line of its own: the generated file tells.
        Err(_) if text.contains("template \"base\"") && config.base.is_some() => {
            let base = config.base.as_ref().expect("checked");
            let generated =
                std::fs::read_to_string(base).with_context(|| format!("{}", base.display()))?;
            config_version(&generated).with_context(|| format!("{}", base.display()))?
        }
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    };
    let table = if version >= 3 { TABLE_V3 } else { TABLE_V2 };
    let block = format!(
        "\n# Added by jitsu install-node: Jitsu unikernels (RuntimeClass handler `jitsu`).\n{table}\n  runtime_type = \"io.containerd.jitsu.v1\"\n  pod_annotations = [\"org.jitsu.*\"]\n  container_annotations = [\"org.jitsu.*\"]\n"
    );
    let partial = path.with_extension("partial");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    }
    std::fs::write(
        &partial,
        format!("{}{block}", text.trim_end_matches('\n').to_owned() + "\n"),
    )
    .with_context(|| format!("{}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("{}", path.display()))?;
    Ok(true)
}

/// Whether the config already has a `jitsu` runtime table, however its
/// keys are quoted.
fn has_runtime(text: &str) -> bool {
    text.lines().any(|l| {
        let l: String = l
            .chars()
            .filter(|c| !matches!(c, ' ' | '"' | '\''))
            .collect();
        l.starts_with('[') && l.ends_with("containerd.runtimes.jitsu]")
    })
}

/// The config's `version`; k3s templates hold Go template actions, so the
/// line is read on its own rather than parsing the whole file as TOML.
fn config_version(text: &str) -> Result<i64> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("version") && l.contains('='));
    let Some(line) = line else {
        // containerd reads a config without `version` as version 1, which
        // names its tables differently; we do not guess.
        bail!("no `version = 2` (or 3) line: containerd config version 1 is not supported");
    };
    let value: toml::Table = line.parse().context("the version line")?;
    match value.get("version").and_then(toml::Value::as_integer) {
        Some(v @ 2..=3) => Ok(v),
        _ => bail!("unsupported containerd config {line:?} (want version 2 or 3)"),
    }
}

/// Restarts the host's k3s or containerd with the host's systemctl. The
/// DaemonSet runs with hostPID, so PID 1's mount namespace is the host's:
/// the child enters it before it execs (the image has no nsenter).
fn restart_containerd(k3s: bool) -> Result<()> {
    let units: &[&str] = if k3s {
        &["k3s-agent", "k3s"]
    } else {
        &["containerd"]
    };
    for unit in units {
        if host_systemctl(&["is-active", "--quiet", unit])? {
            anyhow::ensure!(
                host_systemctl(&["restart", unit])?,
                "systemctl restart {unit} failed"
            );
            println!("restarted: {unit}");
            return Ok(());
        }
    }
    bail!(
        "no active {} unit to restart: restart it by hand",
        units.join(" or ")
    )
}

/// Runs the host's systemctl with `args`; whether it succeeded.
fn host_systemctl(args: &[&str]) -> Result<bool> {
    use std::os::unix::process::CommandExt;
    let host_mounts = std::fs::File::open("/proc/1/ns/mnt").context("/proc/1/ns/mnt")?;
    let mut cmd = std::process::Command::new("/bin/systemctl");
    cmd.args(args);
    // SAFETY: between fork and exec the closure only calls setns(2),
    // which is async-signal-safe, on a file opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&host_mounts, nix::sched::CloneFlags::CLONE_NEWNS)
                .map_err(std::io::Error::from)
        });
    }
    Ok(cmd
        .status()
        .context("running the host's systemctl")?
        .success())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_in(dir: &Path, text: &str) -> ContainerdConfig {
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        ContainerdConfig { path, base: None }
    }

    #[test]
    fn the_runtime_is_added_once_and_parses() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(
            dir.path(),
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"pause\"\n",
        );
        assert!(add_runtime(&config).unwrap());
        let first = std::fs::read_to_string(&config.path).unwrap();
        assert!(!add_runtime(&config).unwrap());
        assert_eq!(std::fs::read_to_string(&config.path).unwrap(), first);
        let parsed: toml::Table = first.parse().unwrap();
        let jitsu =
            &parsed["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["jitsu"];
        assert_eq!(
            jitsu["runtime_type"].as_str(),
            Some("io.containerd.jitsu.v1")
        );
        assert_eq!(
            parsed["plugins"]["io.containerd.grpc.v1.cri"]["sandbox_image"].as_str(),
            Some("pause")
        );
    }

    #[test]
    fn containerd_2_gets_its_own_table() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path(), "version = 3\n");
        assert!(add_runtime(&config).unwrap());
        let parsed: toml::Table = std::fs::read_to_string(&config.path)
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            parsed["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["jitsu"]
                .is_table()
        );
    }

    #[test]
    fn a_table_written_with_other_quotes_counts() {
        let dir = tempfile::tempdir().unwrap();
        let text = "version = 2\n[plugins.'io.containerd.grpc.v1.cri'.containerd.runtimes.'jitsu']\n  runtime_type = 'io.containerd.jitsu.v1'\n";
        let config = config_in(dir.path(), text);
        assert!(!add_runtime(&config).unwrap());
        assert_eq!(std::fs::read_to_string(&config.path).unwrap(), text);
    }

    #[test]
    fn a_k3s_template_on_the_base_takes_the_generated_version() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), "version = 3\n").unwrap();
        let path = dir.path().join("config.toml.tmpl");
        std::fs::write(&path, "{{ template \"base\" . }}\n").unwrap();
        let config = ContainerdConfig {
            path: path.clone(),
            base: Some(dir.path().join("config.toml")),
        };
        assert!(add_runtime(&config).unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{{ template \"base\" . }}\n"), "{text}");
        assert!(text.contains(TABLE_V3), "{text}");
    }

    #[test]
    fn configs_it_cannot_read_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        for text in ["[plugins]\n", "version = 1\n", "version = \"two\"\n"] {
            let config = config_in(dir.path(), text);
            let err = add_runtime(&config).unwrap_err();
            assert!(format!("{err:#}").contains("version"), "{err:#}");
            assert_eq!(std::fs::read_to_string(&config.path).unwrap(), text);
        }
    }
}
