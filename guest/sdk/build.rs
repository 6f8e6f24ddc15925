// Puts this folder on the linker's search path so that every guest binary
// finds `jitsu-guest.ld` (named in .cargo/config.toml) without a path.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-link-search=native={dir}");
    println!("cargo:rerun-if-changed=jitsu-guest.ld");
}
