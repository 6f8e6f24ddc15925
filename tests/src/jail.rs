//! What a jailed process looks like from outside, thread by thread.

use std::os::unix::fs::MetadataExt;

/// The confinement of one thread, as `/proc` shows it.
#[derive(Debug)]
pub struct Confinement {
    pub thread: String,
    pub seccomp: String,
    pub no_new_privs: String,
    pub cap_eff: String,
    pub uid: String,
}

/// Every thread of `pid`.
pub fn threads(pid: i32) -> Vec<Confinement> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process")
        .flatten()
    {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .unwrap_or("")
                .trim()
                .to_string()
        };
        out.push(Confinement {
            thread: field("Name"),
            seccomp: field("Seccomp"),
            no_new_privs: field("NoNewPrivs"),
            cap_eff: field("CapEff"),
            uid: field("Uid"),
        });
    }
    out
}

/// Panics unless every thread of `pid` is under a seccomp filter, with
/// no_new_privs, no effective capability and a uid that is not root's
/// (real, effective, saved and filesystem), and the process's root is not
/// the host's.
pub fn assert_jailed(pid: i32) {
    let threads = threads(pid);
    assert!(!threads.is_empty(), "no threads for {pid}");
    for t in &threads {
        assert_eq!(t.seccomp, "2", "{t:?}");
        assert_eq!(t.no_new_privs, "1", "{t:?}");
        assert_eq!(t.cap_eff, "0000000000000000", "{t:?}");
        let uids: Vec<&str> = t.uid.split_whitespace().collect();
        assert_eq!(uids.len(), 4, "{t:?}");
        assert!(uids.iter().all(|u| *u != "0"), "{t:?}");
    }
    let theirs = std::fs::metadata(format!("/proc/{pid}/root/")).expect("its root");
    let ours = std::fs::metadata("/").unwrap();
    assert_ne!(
        (theirs.dev(), theirs.ino()),
        (ours.dev(), ours.ino()),
        "{pid} has the host's root"
    );
}
