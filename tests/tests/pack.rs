//! `jitsu pack` with a unikernel's builds: KVM, Xen, or both in one image.
//! Each build is checked as what it claims to be, and the image's labels
//! (plain JSON in the archive's config blob) say what it carries and where
//! it can run.

use std::path::Path;
use std::process::Output;

use jitsu_e2e::xen_testbed::xen_guest;
use jitsu_e2e::{guest, jitsu_bin};

fn pack(dir: &Path, builds: &[(&str, &Path)]) -> (Output, Vec<u8>) {
    let out_file = dir.join("image.tar");
    let _ = std::fs::remove_file(&out_file);
    let mut cmd = std::process::Command::new(jitsu_bin());
    cmd.args(["pack", "--name", "jitsu/t:1", "-o"])
        .arg(&out_file);
    for (option, file) in builds {
        cmd.arg(option).arg(file);
    }
    let out = cmd.output().expect("jitsu pack");
    (out, std::fs::read(&out_file).unwrap_or_default())
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn one_image_carries_both_builds_and_each_is_checked_for_its_hypervisor() {
    let dir = tempfile::tempdir().unwrap();
    let kvm = guest("hello-http");
    let xen = xen_guest("hello-http");

    let (out, image) = pack(dir.path(), &[("--kernel", &kvm), ("--xen-kernel", &xen)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(contains(
        &image,
        r#""org.jitsu.xen-kernel":"/xen/unikernel.elf""#
    ));
    assert!(
        !contains(&image, "org.jitsu.hypervisor"),
        "both builds: either hypervisor"
    );

    let (out, image) = pack(dir.path(), &[("--xen-kernel", &xen)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(contains(&image, r#""org.jitsu.hypervisor":"xen""#));
    let (out, image) = pack(dir.path(), &[("--kernel", &kvm)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(contains(&image, r#""org.jitsu.hypervisor":"kvm""#));

    // Each build is what its option says.
    let (out, _) = pack(dir.path(), &[("--kernel", &kvm), ("--xen-kernel", &kvm)]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a Xen PVH kernel"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (out, _) = pack(dir.path(), &[("--kernel", &xen)]);
    assert!(!out.status.success(), "a Xen build is no KVM one");
    let (out, _) = pack(dir.path(), &[]);
    assert!(!out.status.success(), "no build at all");
}
