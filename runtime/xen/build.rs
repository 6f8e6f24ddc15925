// Compiles the toolstack glue against the installed libxl (libxen-dev) and
// links Xen's libraries, found through pkg-config.
fn main() {
    println!("cargo:rerun-if-changed=glue/toolstack.c");
    let libs = pkg_config::Config::new()
        .atleast_version("4.17")
        .probe("xenlight")
        .expect("libxl not found: apt-get install libxen-dev");
    let mut build = cc::Build::new();
    build
        .file("glue/toolstack.c")
        .warnings(true)
        .extra_warnings(true);
    // As system headers: libxl's own trip -Wextra, and a cross build's
    // sysroot is not a system directory to the compiler.
    for path in &libs.include_paths {
        build
            .flag("-isystem")
            .flag(path.to_str().expect("a UTF-8 include path"));
    }
    build.compile("jitsu_xen_toolstack");
    for lib in ["xenstore", "xencontrol", "xentoollog"] {
        pkg_config::probe_library(lib).unwrap_or_else(|e| panic!("{lib}: {e}"));
    }
}
