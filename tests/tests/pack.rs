//! `jitsu pack` with a unikernel's builds: KVM, Xen, or both in one image.
//! Each build is checked as what it claims to be, and the image's labels
//! (plain JSON in the archive's config blob) say what it carries and where
//! it can run.

use std::path::Path;
use std::process::Output;

use jitsu_e2e::testbed::xen_guest;
use jitsu_e2e::{foreign_guest, guest, jitsu_bin};

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

/// The platforms of the image index an archive names, as "os/arch", with
/// each manifest's config agreeing.
fn platforms(archive: &[u8]) -> Vec<String> {
    let mut blobs = std::collections::BTreeMap::new();
    for entry in tar::Archive::new(archive).entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        blobs.insert(path, data);
    }
    let json = |path: &str| -> serde_json::Value {
        serde_json::from_slice(blobs.get(path).unwrap_or_else(|| panic!("{path} missing"))).unwrap()
    };
    let blob = |digest: &serde_json::Value| {
        json(&format!(
            "blobs/sha256/{}",
            digest.as_str().unwrap().trim_start_matches("sha256:")
        ))
    };
    let index = blob(&json("index.json")["manifests"][0]["digest"]);
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let config = blob(&blob(&m["digest"])["config"]["digest"]);
            assert_eq!(config["architecture"], m["platform"]["architecture"]);
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn one_image_carries_a_build_per_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let native = guest("hello-http");
    let foreign = foreign_guest("hello-http");

    let (out, image) = pack(dir.path(), &[("--kernel", &native), ("--kernel", &foreign)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(platforms(&image), ["linux/amd64", "linux/arm64"]);
    let (out, image) = pack(dir.path(), &[("--kernel", &foreign)]);
    assert!(out.status.success());
    let foreign_platform = if cfg!(target_arch = "aarch64") {
        "linux/amd64"
    } else {
        "linux/arm64"
    };
    assert_eq!(platforms(&image), [foreign_platform]);

    // Two builds for one platform, or a build for no platform Jitsu runs on.
    let (out, _) = pack(dir.path(), &[("--kernel", &native), ("--kernel", &native)]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a second KVM build for"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut riscv = std::fs::read(&native).unwrap();
    riscv[18..20].copy_from_slice(&243u16.to_le_bytes());
    let riscv_path = dir.path().join("riscv.elf");
    std::fs::write(&riscv_path, riscv).unwrap();
    let (out, _) = pack(dir.path(), &[("--kernel", &riscv_path)]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("ELF machine 243: Jitsu runs on x86-64 and arm64"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
