//! Fixtures for the end-to-end tests: where the binaries and guests are,
//! private network namespaces with a TAP, and processes that are killed when
//! a test ends, however it ends.
//!
//! These tests need root and /dev/kvm. Without them they fail with a message
//! saying so: a skipped test would hide that nothing was checked.

pub mod conduit;
pub mod containerd;
pub mod cri;
pub mod fleet;
pub mod http;
pub mod jail;
pub mod lazy;
pub mod netns;
pub mod node;
pub mod packet;
pub mod process;
pub mod testbed;

use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The repository this test binary was built from.
pub fn root_dir() -> PathBuf {
    root()
}

/// The `jitsu` binary under test: `$JITSU_BIN`, else the release build.
pub fn jitsu_bin() -> PathBuf {
    let path = std::env::var_os("JITSU_BIN")
        .map_or_else(|| root().join("target/release/jitsu"), PathBuf::from);
    assert!(
        path.exists(),
        "{} is missing: run `make build` (or set JITSU_BIN)",
        path.display()
    );
    path
}

/// The monitor binary: `$JITSU_MONITOR`, else the release build.
pub fn monitor_bin() -> PathBuf {
    let path = std::env::var_os("JITSU_MONITOR").map_or_else(
        || root().join("target/release/jitsu-monitor"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: run `make build` (or set JITSU_MONITOR)",
        path.display()
    );
    path
}

/// The architecture the tests run on, and the other one Jitsu builds for.
const NATIVE_ARCH: &str = std::env::consts::ARCH;
const FOREIGN_ARCH: &str = if cfg!(target_arch = "aarch64") {
    "x86_64"
} else {
    "aarch64"
};

/// A guest ELF by name, for this machine: `$JITSU_GUESTS/NAME`, else the
/// guest workspace's release build.
pub fn guest(name: &str) -> PathBuf {
    guest_in("JITSU_GUESTS", NATIVE_ARCH, name)
}

/// The same guest built for the other architecture (x86-64 or arm64):
/// `$JITSU_FOREIGN_GUESTS/NAME`, else the guest workspace's cross build. The
/// images the tests pack carry both, so that a node picks its own.
pub fn foreign_guest(name: &str) -> PathBuf {
    guest_in("JITSU_FOREIGN_GUESTS", FOREIGN_ARCH, name)
}

fn guest_in(variable: &str, arch: &str, name: &str) -> PathBuf {
    let dir = std::env::var_os(variable).map_or_else(
        || root().join(format!("guest/target/{arch}-unknown-linux-gnu/release")),
        PathBuf::from,
    );
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `make guests` (or set {variable})",
        path.display()
    );
    path
}

/// Fails the test unless it can use KVM and namespaces.
pub fn require_root_and_kvm() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, TAP devices)"
    );
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "this test needs /dev/kvm"
    );
}

/// Polls `f` every 20 ms for up to 10 s; fails the test naming `what`.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A name unique to this process and call, short enough for an interface.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id())
}

/// Reproducible junk bytes (xorshift64) for tests that throw garbage at a
/// server: the same seed gives the same sequence on every run.
pub struct Junk(u64);

impl Junk {
    pub fn new(seed: u64) -> Junk {
        Junk(seed)
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                self.0 as u8
            })
            .collect()
    }
}

/// `xenstore-write PATH VALUE` (Debian's tool) against the daemon at `socket`.
pub fn xenstore_write(socket: &std::path::Path, path: &str, value: &str) -> bool {
    std::process::Command::new("xenstore-write")
        .env("XENSTORED_PATH", socket)
        .args([path, value])
        .status()
        .is_ok_and(|s| s.success())
}
