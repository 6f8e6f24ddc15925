//! `jitsu run` refuses bad kernels and environments with an error that names
//! the file and the reason, exit status 125, and never a Rust panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use jitsu_e2e::{guest, jitsu_bin, process::run_with_timeout, require_root_and_kvm};

const SETUP_FAILED: i32 = 125;

struct Elf(Vec<u8>);

impl Elf {
    fn abi_test() -> Elf {
        Elf(std::fs::read(guest("abi-test")).expect("read abi-test"))
    }

    fn u16_at(&self, off: usize) -> usize {
        u16::from_le_bytes([self.0[off], self.0[off + 1]]) as usize
    }

    fn put_u16(&mut self, off: usize, v: u16) {
        self.0[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn put_u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// Offsets of the program headers of type `p_type`.
    fn phdrs(&self, p_type: u32) -> Vec<usize> {
        let phoff = u64::from_le_bytes(self.0[0x20..0x28].try_into().unwrap()) as usize;
        let (size, count) = (self.u16_at(0x36), self.u16_at(0x38));
        (0..count)
            .map(|i| phoff + i * size)
            .filter(|&off| u32::from_le_bytes(self.0[off..off + 4].try_into().unwrap()) == p_type)
            .collect()
    }

    /// Offset of the ABI note's header (namesz, descsz, type, "JITSU\0\0\0", desc).
    fn abi_note(&self) -> usize {
        let name = self
            .0
            .windows(8)
            .position(|w| w == b"JITSU\0\0\0")
            .expect("ABI note");
        name - 12
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.0).unwrap();
        path
    }
}

const PT_LOAD: u32 = 1;

fn jitsu_run(args: &[&str], kernel: &Path) -> Output {
    let mut cmd = Command::new(jitsu_bin());
    cmd.arg("run").args(args).arg(kernel);
    run_with_timeout(&mut cmd, Duration::from_secs(20))
}

fn assert_refused(out: &Output, kernel: &Path, reason: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(SETUP_FAILED), "stderr: {err}");
    assert!(
        err.contains(&kernel.display().to_string()),
        "error does not name the file: {err}"
    );
    assert!(err.contains(reason), "error does not say {reason:?}: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "a Rust panic leaked: {err}"
    );
    assert!(out.stdout.is_empty(), "no guest output expected");
}

fn refuse(elf: &Elf, name: &str, args: &[&str], reason: &str) {
    require_root_and_kvm();
    let dir = tempfile::tempdir().unwrap();
    let path = elf.write(dir.path(), name);
    assert_refused(&jitsu_run(args, &path), &path, reason);
}

#[test]
fn not_an_elf() {
    refuse(
        &Elf(b"#!/bin/sh\necho hello\n".to_vec()),
        "script.elf",
        &[],
        "not an ELF file",
    );
}

#[test]
fn missing_file() {
    let path = Path::new("/nonexistent/kernel.elf");
    assert_refused(&jitsu_run(&[], path), path, "No such file");
}

#[test]
fn wrong_architecture() {
    // The other architecture Jitsu runs, and one it runs nowhere.
    let (other, native) = if cfg!(target_arch = "aarch64") {
        (62, "arm64") // EM_X86_64
    } else {
        (183, "x86-64") // EM_AARCH64
    };
    let mut elf = Elf::abi_test();
    elf.put_u16(0x12, other);
    refuse(&elf, "other.elf", &[], &format!("want {native})"));
    elf.put_u16(0x12, 40); // EM_ARM
    refuse(
        &elf,
        "arm32.elf",
        &[],
        "wrong architecture (ELF machine 40, want",
    );
}

#[test]
fn position_independent_executable() {
    let mut elf = Elf::abi_test();
    elf.put_u16(0x10, 3); // ET_DYN
    refuse(&elf, "pie.elf", &[], "not an executable");
}

#[test]
fn segment_outside_memory() {
    let mut elf = Elf::abi_test();
    let last = *elf.phdrs(PT_LOAD).last().unwrap();
    elf.put_u64(last + 0x10, 0x7000_0000); // p_vaddr
    elf.put_u64(last + 0x18, 0x7000_0000); // p_paddr
    refuse(
        &elf,
        "far.elf",
        &["--mem", "16M"],
        "lies outside guest memory",
    );
}

#[test]
fn memory_below_the_minimum() {
    refuse(
        &Elf::abi_test(),
        "small-mem.elf",
        &["--mem", "1M"],
        "memory size 1048576 is not valid",
    );
}

#[test]
fn writable_and_executable_segment() {
    let mut elf = Elf::abi_test();
    let text = elf.phdrs(PT_LOAD)[0];
    elf.put_u32(text + 4, 7); // PF_R | PF_W | PF_X
    refuse(&elf, "wx.elf", &[], "both writable and executable");
}

#[test]
fn abi_version_mismatch() {
    let mut elf = Elf::abi_test();
    let note = elf.abi_note();
    elf.put_u32(note + 20, 99);
    refuse(&elf, "v99.elf", &[], "ABI version 99 is not supported");
}

#[test]
fn missing_abi_note() {
    let mut elf = Elf::abi_test();
    let note = elf.abi_note();
    elf.put_u32(note + 8, 1); // not the ABI note type any more
    refuse(&elf, "plain.elf", &[], "no Jitsu ABI note");
}

#[test]
fn truncated_file() {
    let mut elf = Elf::abi_test();
    elf.0.truncate(0x200);
    refuse(&elf, "short.elf", &[], "malformed or truncated ELF");
}

#[test]
fn tap_missing() {
    refuse(
        &Elf::abi_test(),
        "ok.elf",
        &["--net", "nosuchtap0", "--ip", "10.77.0.2/24"],
        "TAP interface nosuchtap0 does not exist",
    );
}

#[test]
fn kvm_not_accessible() {
    require_root_and_kvm();
    let dir = tempfile::tempdir().unwrap();
    let path = Elf::abi_test().write(dir.path(), "ok.elf");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    // As an unprivileged user, /dev/kvm (root, 0600 here) cannot be opened.
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(jitsu_bin())
        .arg("run")
        .arg(&path);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(20));
    assert_refused(&out, &path, "cannot open /dev/kvm");
}
