//! The Xen backend, on real Xen: boots the Xen test bed (Xen 4.17 and a
//! Debian dom0 under QEMU's emulation, `scripts/testbed.sh xen`) once, runs
//! the Xen suite (`src/bin/jitsu-xen-suite/`) in its dom0 against the
//! freshly built binaries and Xen guests, and checks that every one of its
//! tests ran and passed. Its output, the suite's per-test lines included,
//! is printed as it comes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use jitsu_e2e::jitsu_bin;
use jitsu_e2e::testbed::{self, copy, copy_stripped, release_bin, run_in_dom0, xen_guest, Bed};

/// How many tests the suite has; a suite that ran fewer hid something.
const SUITE_TESTS: usize = 21;

/// A Linux initramfs whose init prints one line and powers off.
fn linux_initrd(dir: &Path) -> PathBuf {
    let tree = dir.join("initrd-tree");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    copy(Path::new("/bin/busybox"), &tree.join("bin/busybox"));
    std::fs::write(
        tree.join("init"),
        "#!/bin/busybox sh\n/bin/busybox echo jitsu-linux-guest-ok\n/bin/busybox poweroff -f\n",
    )
    .unwrap();
    std::fs::set_permissions(
        tree.join("init"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = dir.join("initrd.cpio");
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet > \"$0\"")
        .arg(&out)
        .current_dir(&tree)
        .status()
        .expect("cpio");
    assert!(status.success(), "building the Linux guest's initramfs");
    std::fs::remove_dir_all(&tree).unwrap();
    out
}

#[test]
fn the_xen_suite_passes_in_a_xen_dom0() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the Xen test bed needs root (apt, QEMU)"
    );
    let image = testbed::image(Bed::Xen);

    let share = tempfile::tempdir().unwrap();
    let s = share.path();
    copy_stripped(&jitsu_bin(), &s.join("bin/jitsu"));
    for bin in [
        "jitsu-xen-monitor",
        "jitsu-xen-suite",
        "containerd-shim-jitsu-v1",
    ] {
        copy_stripped(&release_bin(bin), &s.join("bin").join(bin));
    }
    for guest in ["abi-test", "hello-http", "counter", "probe"] {
        copy(&xen_guest(guest), &s.join("guests/xen").join(guest));
    }
    for guest in ["abi-test", "hello-http"] {
        copy(&jitsu_e2e::guest(guest), &s.join("guests/kvm").join(guest));
    }
    // The pause program of the CRI test's pods (`make build`).
    copy(
        &jitsu_e2e::cri::native_binary("pause"),
        &s.join("bin/pause"),
    );
    copy(&image.join("vmlinuz"), &s.join("linux/vmlinuz"));
    let initrd = linux_initrd(&s.join("linux"));
    assert!(initrd.exists());

    let script = "JITSU_BIN=/jitsu/bin/jitsu JITSU_XEN_MONITOR=/jitsu/bin/jitsu-xen-monitor \
        JITSU_XEN_GUESTS=/jitsu/guests/xen JITSU_KVM_GUESTS=/jitsu/guests/kvm \
        JITSU_LINUX_KERNEL=/jitsu/linux/vmlinuz JITSU_LINUX_INITRD=/jitsu/linux/initrd.cpio \
        JITSU_PAUSE=/jitsu/bin/pause \
        /jitsu/bin/jitsu-xen-suite --color never";
    let mut testbed = run_in_dom0(s, script)
        .stdout(Stdio::piped())
        .spawn()
        .expect("testbed.sh");
    let mut passed = None;
    for line in BufReader::new(testbed.stdout.take().unwrap())
        .lines()
        .map_while(|l| l.ok())
    {
        println!("dom0| {line}");
        if let Some(rest) = line.strip_prefix("test result: ok. ") {
            passed = rest.split(' ').next().and_then(|n| n.parse::<usize>().ok());
        }
    }
    let status = testbed.wait().unwrap();
    assert!(
        status.success(),
        "the Xen suite failed in dom0 ({status}); its output is above"
    );
    assert_eq!(
        passed,
        Some(SUITE_TESTS),
        "the suite did not report all {SUITE_TESTS} tests passed"
    );
}
