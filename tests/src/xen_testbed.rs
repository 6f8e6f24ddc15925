//! The Xen test bed from the host's side (`scripts/testbed.sh xen`): what
//! goes into a dom0's share, and the command that runs a script there. Used
//! by the Xen suite's host test and by the benchmark's `xen` section.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::root;

/// A Xen guest by name: `$JITSU_XEN_GUESTS/NAME`, else the guest
/// workspace's Xen build.
pub fn xen_guest(name: &str) -> PathBuf {
    let dir = std::env::var_os("JITSU_XEN_GUESTS").map_or_else(
        || root().join("guest/target/xen/x86_64-unknown-linux-gnu/release"),
        PathBuf::from,
    );
    dir.join(name)
}

/// A release binary of this workspace by name.
pub fn release_bin(name: &str) -> PathBuf {
    root().join("target/release").join(name)
}

/// Copies a host binary into the share without its line tables: everything
/// in the share rides in dom0's initramfs, in its memory.
pub fn copy_stripped(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let status = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(to)
        .arg(from)
        .status()
        .expect("strip");
    assert!(
        status.success(),
        "strip {} (run `make build`)",
        from.display()
    );
}

/// Copies a file into the share as it is.
pub fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("{}: {e} (run `make build`)", from.display()));
}

/// The test bed's image folder (built, or found in the cache).
pub fn image() -> PathBuf {
    let out = Command::new(root().join("scripts/xen-testbed/image.sh"))
        .output()
        .expect("image.sh");
    assert!(
        out.status.success(),
        "building the test bed image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Boots the test bed with `share` as /jitsu and runs `script` (sh) in dom0.
pub fn run_in_dom0(share: &Path, script: &str) -> Command {
    let mut cmd = Command::new(root().join("scripts/testbed.sh"));
    cmd.args(["xen", "run", "--share"])
        .arg(share)
        .args(["--", "sh", "-c", script]);
    cmd
}
