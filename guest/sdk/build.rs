// Puts the guests' linker script on the linker's search path so that every
// guest binary finds `jitsu-guest.ld` (named in .cargo/config.toml) without
// a path. The script is written into OUT_DIR with the image's base: 1 MiB,
// or for an arm64 Xen domain the start of Xen's guest RAM, where libxl
// loads an Image (it cannot be told another address).
use std::path::PathBuf;

const BASE: &str = "0x100000";
const XEN_ARM64_RAM: &str = "0x40000000";

fn main() {
    let dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let xen = std::env::var_os("CARGO_FEATURE_XEN_PVH").is_some();
    let base = if xen && arch == "aarch64" {
        XEN_ARM64_RAM
    } else {
        BASE
    };
    let script =
        std::fs::read_to_string(dir.join("jitsu-guest.ld")).expect("reading jitsu-guest.ld");
    let line = format!(". = {BASE};");
    assert!(
        script.contains(&line),
        "jitsu-guest.ld must set its base with `{line}`"
    );
    std::fs::write(
        out.join("jitsu-guest.ld"),
        script.replace(&line, &format!(". = {base};")),
    )
    .expect("writing the linker script");
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rerun-if-changed=jitsu-guest.ld");
}
