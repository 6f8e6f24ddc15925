//! `jitsu install-node`, the node installer's job, against a host root in a
//! temp dir: plain containerd and k3s, run twice (the second run changes
//! nothing). Restarting containerd is left out (`--no-restart`): there is
//! no systemd here.

use std::path::Path;
use std::process::Command;

use jitsu_e2e::jitsu_bin;

fn install(root: &Path) -> String {
    let out = Command::new(jitsu_bin())
        .args(["install-node", "--no-restart", "--host-root"])
        .arg(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn installed_twice(root: &Path, config: &Path) -> String {
    let first = install(root);
    assert_eq!(first.matches("updated:").count(), 4, "{first}");
    for bin in ["jitsu", "jitsu-monitor", "containerd-shim-jitsu-v1"] {
        let copied = std::fs::read(root.join("usr/local/bin").join(bin)).unwrap();
        let built = std::fs::read(jitsu_bin().with_file_name(bin)).unwrap();
        assert!(copied == built, "{bin} differs from the build");
    }
    let text = std::fs::read_to_string(config).unwrap();
    let second = install(root);
    assert_eq!(second.matches("unchanged:").count(), 4, "{second}");
    assert_eq!(std::fs::read_to_string(config).unwrap(), text);
    text
}

#[test]
fn plain_containerd_gets_the_runtime_once() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("etc/containerd/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"registry.k8s.io/pause:3.9\"\n").unwrap();
    let text = installed_twice(root.path(), &config);
    assert!(
        text.contains("sandbox_image = \"registry.k8s.io/pause:3.9\""),
        "{text}"
    );
    assert!(
        text.contains(r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.jitsu]"#),
        "{text}"
    );
    assert!(
        text.contains(r#"runtime_type = "io.containerd.jitsu.v1""#),
        "{text}"
    );
}

#[test]
fn k3s_gets_a_template_from_its_generated_config() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("var/lib/rancher/k3s/agent/etc/containerd");
    std::fs::create_dir_all(&dir).unwrap();
    let generated = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = \"/var/lib/rancher/k3s/data/current/bin\"\n";
    std::fs::write(dir.join("config.toml"), generated).unwrap();
    let text = installed_twice(root.path(), &dir.join("config.toml.tmpl"));
    assert!(text.starts_with(generated), "{text}");
    assert!(
        text.contains("pod_annotations = [\"org.jitsu.*\"]"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("config.toml")).unwrap(),
        generated,
        "k3s's own file is k3s's"
    );
}

#[test]
fn the_installer_image_refuses_binaries_that_need_a_libc() {
    // The release build links glibc dynamically; the image has no libc.
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(jitsu_bin())
        .args(["pack-installer", "--bin-dir"])
        .arg(jitsu_bin().parent().unwrap())
        .arg("-o")
        .arg(out_dir.path().join("installer.tar"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("dynamically linked"), "{err}");
    assert!(!out_dir.path().join("installer.tar").exists());
}

/// The config the containerd under test writes by default (version 2 for
/// 1.6, version 3 for 2.x), with the runtime installed, is one that
/// containerd itself reads back with the `jitsu` runtime in its CRI plugin.
#[test]
fn the_containerd_under_test_reads_the_runtime_from_its_own_default_config() {
    use jitsu_e2e::containerd::{containerd_major, containerd_tool};
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("etc/containerd/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    let default = Command::new(containerd_tool("containerd"))
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(default.status.success());
    std::fs::write(&config, &default.stdout).unwrap();
    installed_twice(root.path(), &config);
    let dump = Command::new(containerd_tool("containerd"))
        .arg("--config")
        .arg(&config)
        .args(["config", "dump"])
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout).replace('\'', "\"");
    let plugin = if containerd_major() >= 2 {
        "io.containerd.cri.v1.runtime"
    } else {
        "io.containerd.grpc.v1.cri"
    };
    let table = format!("[plugins.\"{plugin}\".containerd.runtimes.jitsu]");
    let at = dump
        .find(&table)
        .unwrap_or_else(|| panic!("no {table} in:\n{dump}"));
    let body = &dump[at + table.len()..];
    let body = &body[..body.find("\n[").map_or(body.len(), |n| n)];
    let body = body.split("\n      [").next().unwrap_or(body);
    assert!(
        body.contains("runtime_type = \"io.containerd.jitsu.v1\""),
        "{table}{body}"
    );
    assert!(body.contains("org.jitsu.*"), "{table}{body}");
}

/// The installer image has a platform per architecture, told by its
/// binaries; the cross build (`make cross`) is linked statically.
#[test]
fn the_installer_image_carries_each_architectures_binaries() {
    let arm64 = jitsu_e2e::root_dir().join("target/aarch64-unknown-linux-gnu/release");
    let out_dir = tempfile::tempdir().unwrap();
    let image = out_dir.path().join("installer.tar");
    let pack = |dirs: &[&std::path::Path]| {
        let mut cmd = Command::new(jitsu_bin());
        cmd.arg("pack-installer");
        for dir in dirs {
            cmd.arg("--bin-dir").arg(dir);
        }
        cmd.arg("-o").arg(&image).output().unwrap()
    };
    let out = pack(&[&arm64]);
    assert!(
        out.status.success(),
        "{} (run `make cross`)",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&image).unwrap();
    let has = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(has(r#""architecture":"arm64""#));
    assert!(!has(r#""architecture":"amd64""#));

    std::fs::remove_file(&image).unwrap();
    let out = pack(&[&arm64, &arm64]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("two images for arm64"), "{err}");
    assert!(!image.exists());
}
