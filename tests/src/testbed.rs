//! The test beds from the host's side (`scripts/testbed.sh`): what goes
//! into a bed's share, and the command that runs a script there. Used by the
//! Xen suite's and the arm64 suite's host tests and by the benchmark's `xen`
//! and `arm64` sections.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

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
    /// An x86-64 Debian node with KVM under the same emulation as `Arm64`
    /// (the Xen bed's kernel and root, without Xen): the baseline that
    /// makes the arm64 bed's benchmark rows comparable.
    X86,
}

impl Bed {
    fn name(self) -> &'static str {
        match self {
            Bed::Xen => "xen",
            Bed::Arm64 => "arm64",
            Bed::XenArm64 => "xen-arm64",
            Bed::X86 => "x86",
        }
    }

    /// The folder of the script that builds the bed's image.
    fn image_dir(self) -> &'static str {
        match self {
            Bed::Xen | Bed::X86 => "xen-testbed",
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

/// Runs `script` in `bed` (as `run_in`), echoing each line of its output
/// with `tag` in front as it comes and handing it to `each`; returns the
/// command's status. Lines need not be UTF-8 (a guest's console is not).
pub fn run_in_lines(
    bed: Bed,
    share: &Path,
    script: &str,
    tag: &str,
    mut each: impl FnMut(&str),
) -> ExitStatus {
    let mut child = run_in(bed, share, script)
        .stdout(Stdio::piped())
        .spawn()
        .expect("testbed.sh");
    let stdout = child.stdout.take().expect("piped stdout");
    for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
        let line = String::from_utf8_lossy(&line);
        println!("{tag}{line}");
        each(&line);
    }
    child.wait().expect("waiting for testbed.sh")
}

/// Fills `share` with what a KVM node bed (`Bed::Arm64` or `Bed::X86`)
/// needs to run the end-to-end fixtures: `jitsu`, the monitor (static: the
/// jail has no libraries) and the shim built for it, `guests` for both
/// architectures (the images the fixtures pack carry both), and its static
/// native server and pause program. Returns the shell line that points the
/// fixtures at them inside the bed.
pub fn node_share(bed: Bed, share: &Path, guests: &[&str]) -> String {
    let (arch, bins, monitor) = match bed {
        Bed::X86 => (
            "x86_64",
            root().join("target/release"),
            root().join("target/x86_64-unknown-linux-gnu/release/jitsu-monitor"),
        ),
        _ => ("aarch64", arm64_dir(), arm64_dir().join("jitsu-monitor")),
    };
    for bin in ["jitsu", "containerd-shim-jitsu-v1"] {
        copy_stripped(&bins.join(bin), &share.join("bin").join(bin));
    }
    copy_stripped(&monitor, &share.join("bin/jitsu-monitor"));
    // `guest` is this machine's architecture's build, `foreign_guest` the
    // other's; the bed's own go to `guests/own`.
    let bed_is_this_machine = arch == std::env::consts::ARCH;
    for name in guests {
        let (own, other) = if bed_is_this_machine {
            (crate::guest(name), crate::foreign_guest(name))
        } else {
            (crate::foreign_guest(name), crate::guest(name))
        };
        copy(&own, &share.join("guests/own").join(name));
        copy(&other, &share.join("guests/other").join(name));
    }
    let native = root().join(format!(
        "bench/native-http/target/{arch}-unknown-linux-gnu/release"
    ));
    for bin in ["native-http", "pause"] {
        copy(&native.join(bin), &share.join("native").join(bin));
    }
    "export JITSU_BIN=/jitsu/bin/jitsu JITSU_MONITOR=/jitsu/bin/jitsu-monitor \
     JITSU_GUESTS=/jitsu/guests/own JITSU_FOREIGN_GUESTS=/jitsu/guests/other \
     JITSU_NATIVE_BINS=/jitsu/native"
        .to_string()
}
