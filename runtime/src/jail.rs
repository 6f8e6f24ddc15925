//! The jail a monitor enters once it holds everything it needs (the kernel
//! file, `/dev/kvm`, the TAP, the control socket, the console: all open
//! descriptors) and before it reads a byte of untrusted input (the ELF, a
//! frame, a XenStore value): a mount namespace of its own whose root is an
//! empty read-only tmpfs (plus, read-only, the directories named in
//! `binds`: the XenStore daemon's socket), a per-container uid and gid
//! with no supplementary groups and hence no capabilities, an empty
//! capability bounding set, and `no_new_privs`. What is left to it is what
//! its descriptors allow; the seccomp allowlist then limits what it may do
//! with them.
//!
//! It must run while the process has one thread: a mount namespace cannot
//! be unshared by a thread that shares its filesystem context.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{chdir, pivot_root, setgroups, setresgid, setresuid, Gid, Uid};
use thiserror::Error;

#[derive(Debug, Error)]
#[error("entering the jail: {step}: {source}")]
pub struct JailError {
    step: String,
    source: nix::Error,
}

fn step(what: impl Into<String>) -> impl FnOnce(nix::Error) -> JailError {
    let step = what.into();
    move |source| JailError { step, source }
}

pub struct Jail {
    /// The uid and gid the monitor runs as (never 0).
    pub uid: u32,
    pub gid: u32,
    /// An empty directory that becomes the root (a tmpfs is mounted on it,
    /// seen only inside the jail).
    pub root: PathBuf,
    /// Host directories visible inside, read-only, under `/<name>`.
    pub binds: Vec<(PathBuf, OsString)>,
}

/// Mounts that must not give anything back: no devices, no set-uid
/// programs, nothing executable.
const LOCKED: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

impl Jail {
    pub fn enter(&self) -> Result<(), JailError> {
        if self.uid == 0 || self.gid == 0 {
            return Err(JailError {
                step: "the jail's uid and gid must not be root's".into(),
                source: nix::Error::EINVAL,
            });
        }
        self.mount_root()?;
        self.drop_privileges()
    }

    fn mount_root(&self) -> Result<(), JailError> {
        let none: Option<&str> = None;
        unshare(CloneFlags::CLONE_NEWNS).map_err(step("a mount namespace"))?;
        // Nothing done here may reach the host's mounts.
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
            .map_err(step("making mounts private"))?;
        mount(
            Some("tmpfs"),
            &self.root,
            Some("tmpfs"),
            LOCKED,
            Some("size=16k,nr_inodes=16,mode=0555"),
        )
        .map_err(step(format!("tmpfs on {}", self.root.display())))?;
        for (host, name) in &self.binds {
            let target = self.root.join(name);
            nix::unistd::mkdir(&target, nix::sys::stat::Mode::from_bits_truncate(0o555))
                .map_err(step(format!("{}", target.display())))?;
            bind_read_only(host, &target)?;
        }
        chdir(&self.root).map_err(step("entering the new root"))?;
        // The old root is stacked under the new one and detached at once:
        // no directory to keep it in, and nothing of it stays reachable.
        pivot_root(".", ".").map_err(step("pivot_root"))?;
        umount2(".", MntFlags::MNT_DETACH).map_err(step("detaching the old root"))?;
        chdir("/").map_err(step("chdir /"))?;
        mount(
            none,
            "/",
            none,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | LOCKED,
            none,
        )
        .map_err(step("making the root read-only"))
    }

    fn drop_privileges(&self) -> Result<(), JailError> {
        // The bounding set first (it takes CAP_SETPCAP, gone after setresuid).
        for cap in 0.. {
            // SAFETY: PR_CAPBSET_DROP takes a capability number and changes
            // only this thread's bounding set; EINVAL past the last one.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
                break;
            }
        }
        setgroups(&[]).map_err(step("dropping supplementary groups"))?;
        let (uid, gid) = (Uid::from_raw(self.uid), Gid::from_raw(self.gid));
        setresgid(gid, gid, gid).map_err(step(format!("gid {gid}")))?;
        // From root to another uid without keep-caps: the permitted,
        // effective and ambient capability sets are cleared.
        setresuid(uid, uid, uid).map_err(step(format!("uid {uid}")))?;
        // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(step("no_new_privs")(nix::Error::last()));
        }
        Ok(())
    }
}

fn bind_read_only(host: &Path, target: &Path) -> Result<(), JailError> {
    let none: Option<&str> = None;
    let what = || format!("binding {} at {}", host.display(), target.display());
    mount(Some(host), target, none, MsFlags::MS_BIND, none).map_err(step(what()))?;
    // A bind mount takes its flags only from a remount.
    mount(
        none,
        target,
        none,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | LOCKED,
        none,
    )
    .map_err(step(what()))
}
