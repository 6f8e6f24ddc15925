//! The test beds from the host's side (`scripts/testbed.sh`): what goes
//! into a bed's share, and the command that runs a script there. Used by the
//! Xen suite's and the arm64 suite's host tests and by the benchmark's `xen`
//! and `arm64` sections.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::root;

/// A Xen guest by name: `$JITSU_XEN_GUESTS/NAME`, else the guest
/// workspace's Xen build for x86-64.
pub fn xen_guest(name: &str) -> PathBuf {
    let dir = std::env::var_os("JITSU_XEN_GUESTS").map_or_else(
        || root().join("guest/target/xen/x86_64-unknown-linux-gnu/release"),
        PathBuf::from,
    );
    dir.join(name)
}

/// The test beds.
#[derive(Clone, Copy, Debug)]
pub enum Bed {
    /// Xen 4.17 with a Debian dom0, x86-64.
    Xen,
    /// A Debian arm64 node with KVM.
    Arm64,
    /// Xen 4.17 for arm64, the arm64 node's kernel and root as its dom0.
    XenArm64,
}

impl Bed {
    fn name(self) -> &'static str {
        match self {
            Bed::Xen => "xen",
            Bed::Arm64 => "arm64",
            Bed::XenArm64 => "xen-arm64",
        }
    }

    /// The folder of the script that builds the bed's image.
    fn image_dir(self) -> &'static str {
        match self {
            Bed::Xen => "xen-testbed",
            Bed::Arm64 | Bed::XenArm64 => "arm64-testbed",
        }
    }
}

/// A release binary of this workspace by name.
pub fn release_bin(name: &str) -> PathBuf {
    root().join("target/release").join(name)
}

/// An arm64 Xen guest by name, as the Image libxl boots (`make cross`).
pub fn xen_arm64_guest(name: &str) -> PathBuf {
    root()
        .join("guest/target/xen/aarch64-unknown-linux-gnu/release/image")
        .join(name)
}

/// The cross build of the Xen backend's monitor for arm64, linked against
/// the arm64 dom0's libxl (`make cross`).
pub fn xen_arm64_monitor() -> PathBuf {
    root().join("target/xen-arm64/aarch64-unknown-linux-gnu/release/jitsu-xen-monitor")
}

/// The cross build of the workspace for arm64 (`make cross`).
pub fn arm64_dir() -> PathBuf {
    root().join("target/aarch64-unknown-linux-gnu/release")
}

/// Copies a binary into the share without its line tables: everything in
/// the share rides in the bed's initramfs, in its memory. An arm64 binary
/// needs the cross binutils' strip.
pub fn copy_stripped(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let mut header = [0u8; 20];
    if let Ok(mut file) = std::fs::File::open(from) {
        let _ = std::io::Read::read_exact(&mut file, &mut header);
    }
    let aarch64 = u16::from_le_bytes([header[18], header[19]]) == 183;
    let strip = if aarch64 {
        "aarch64-linux-gnu-strip"
    } else {
        "strip"
    };
    let status = Command::new(strip)
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

/// The bed's image folder (built, or found in the cache).
pub fn image(bed: Bed) -> PathBuf {
    let out = Command::new(root().join(format!("scripts/{}/image.sh", bed.image_dir())))
        .output()
        .expect("image.sh");
    assert!(
        out.status.success(),
        "building the test bed image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Boots the Xen test bed with `share` as /jitsu and runs `script` (sh) in
/// dom0.
pub fn run_in_dom0(share: &Path, script: &str) -> Command {
    run_in(Bed::Xen, share, script)
}

/// Boots `bed` with `share` as /jitsu and runs `script` (sh) there.
pub fn run_in(bed: Bed, share: &Path, script: &str) -> Command {
    let mut cmd = Command::new(root().join("scripts/testbed.sh"));
    cmd.args([bed.name(), "run", "--share"])
        .arg(share)
        .args(["--", "sh", "-c", script]);
    cmd
}

/// Fills `share` with what an arm64 node needs to run the end-to-end
/// fixtures: the cross build's `jitsu`, monitor and shim, `guests` for arm64
/// and for x86-64 (the images the fixtures pack carry both), and the static
/// native server and pause program. Returns the shell line that points the
/// fixtures at them inside the bed.
pub fn arm64_node_share(share: &Path, guests: &[&str]) -> String {
    let arm64 = arm64_dir();
    for bin in ["jitsu", "jitsu-monitor", "containerd-shim-jitsu-v1"] {
        copy_stripped(&arm64.join(bin), &share.join("bin").join(bin));
    }
    // On this machine `guest` is the x86-64 build and `foreign_guest` the
    // arm64 one; in the bed it is the other way round.
    for name in guests {
        copy(
            &crate::foreign_guest(name),
            &share.join("guests/arm64").join(name),
        );
        copy(&crate::guest(name), &share.join("guests/x86_64").join(name));
    }
    let native = root().join("bench/native-http/target/aarch64-unknown-linux-gnu/release");
    for bin in ["native-http", "pause"] {
        copy(&native.join(bin), &share.join("native").join(bin));
    }
    "export JITSU_BIN=/jitsu/bin/jitsu JITSU_MONITOR=/jitsu/bin/jitsu-monitor \
     JITSU_GUESTS=/jitsu/guests/arm64 JITSU_FOREIGN_GUESTS=/jitsu/guests/x86_64 \
     JITSU_NATIVE_BINS=/jitsu/native"
        .to_string()
}
