//! The uid (and gid) each container's monitor runs as: one of
//! [`jitsu_registry::identity`]'s slots, leased as a file under
//! `<state>/uids/` (created exclusively, so two containers never share one)
//! and released at cleanup.

use std::path::PathBuf;

use jitsu_registry::identity::{monitor_uid, MONITOR_SLOTS};

use crate::state::state_dir;

fn dir() -> PathBuf {
    state_dir().join("uids")
}

/// Leases a free slot for `owner`.
pub fn lease(owner: &str) -> Result<u32, String> {
    let dir = dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for slot in 0..MONITOR_SLOTS {
        let file = dir.join(slot.to_string());
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file)
        {
            Ok(mut f) => {
                use std::io::Write;
                f.write_all(owner.as_bytes())
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                return Ok(slot);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("{}: {e}", file.display())),
        }
    }
    Err(format!("all {MONITOR_SLOTS} monitor uids are in use"))
}

pub fn release(slot: u32) {
    let _ = std::fs::remove_file(dir().join(slot.to_string()));
}

/// The uid and gid of a slot (the same number).
pub fn ids(slot: u32) -> (u32, u32) {
    let id = monitor_uid(slot);
    (id, id)
}
