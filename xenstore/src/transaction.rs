//! Transactions: a snapshot to read from, a log of operations to replay at
//! commit, and the record of what was read, which decides whether the
//! commit may go ahead.
//!
//! # Commit rule
//!
//! A transaction records every node it read or wrote, with the generations
//! the node had in its snapshot (or its absence). At commit, each recorded
//! node is compared with the live tree:
//!
//! - created, removed or re-created since the snapshot: conflict;
//! - value or permissions changed (`vgen`), if the transaction read or wrote
//!   them: conflict;
//! - children changed (`cgen`), if the transaction listed them or changed
//!   them itself: conflict in `strict` mode. Otherwise this is the **merge
//!   rule**: the commit goes ahead when no child name added or removed by
//!   others since the snapshot is a name this transaction added or removed.
//!
//! On conflict the commit fails with EAGAIN and nothing is applied. On
//! success the logged operations are replayed on the live tree, with the
//! same permission and quota checks, all or nothing.
//!
//! # Why the merge rule is safe
//!
//! Adding or removing *different* children of one parent commute: applying
//! the two transactions in either order gives the same tree, and each sees
//! exactly the values it read (those are checked separately and must be
//! unchanged). What a merged transaction may have missed is only that its
//! listing of the parent was incomplete: children created or removed by
//! others, which it did not touch. A transaction whose correctness depends
//! on the complete listing (say, "at most N children") must run with
//! `--strict`. Jitsu's registration transaction, which creates its own
//! `/jitsu/services/<name>` and lists the parent to find name clashes, is
//! safe: a clash is a name both touched, and that still conflicts.

use std::collections::{HashMap, HashSet};

use crate::perms::Perms;
use crate::store::{Change, ChangeKind, Quota, Store};
use crate::wire::XsError;

/// What a transaction looked at on one node.
#[derive(Debug, Default, Clone, Copy)]
struct Access {
    /// Value, permissions or existence.
    value: bool,
    /// The set of children (listed, or changed by this transaction).
    children: bool,
}

#[derive(Debug, Clone)]
enum Op {
    Write(String, Vec<u8>),
    Mkdir(String),
    Rm(String),
    SetPerms(String, Perms),
}

pub struct Transaction {
    pub domid: u32,
    snapshot: Store,
    working: Store,
    log: Vec<Op>,
    accessed: HashMap<String, Access>,
    /// Child names this transaction added or removed, per parent.
    own_children: HashMap<String, HashSet<String>>,
}

/// Why a commit did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitError {
    /// Something the transaction depended on changed: EAGAIN.
    Conflict { path: String },
    /// Replaying the log failed (a quota reached meanwhile, say).
    Replay(XsError),
}

impl Transaction {
    pub fn start(live: &Store, domid: u32) -> Transaction {
        Transaction {
            domid,
            snapshot: live.clone(),
            working: live.clone(),
            log: Vec::new(),
            accessed: HashMap::new(),
            own_children: HashMap::new(),
        }
    }

    fn note(&mut self, path: &str, value: bool, children: bool) {
        let a = self.accessed.entry(path.to_string()).or_default();
        a.value |= value;
        a.children |= children;
    }

    /// Records what changes touched: the node itself, and for a created or
    /// removed node its parent's set of children.
    fn note_changes(&mut self, changes: &[Change]) {
        for change in changes {
            self.note(&change.path, true, false);
            if change.kind == ChangeKind::Modified {
                continue;
            }
            if let Some(parent) = crate::path::parent(&change.path) {
                self.note(parent, false, true);
                let name = crate::path::basename(&change.path).to_string();
                self.own_children
                    .entry(parent.to_string())
                    .or_default()
                    .insert(name);
            }
        }
    }

    pub fn read(&mut self, path: &str) -> Result<std::sync::Arc<[u8]>, XsError> {
        self.note(path, true, false);
        self.working.read(path, self.domid)
    }

    pub fn directory(&mut self, path: &str) -> Result<Vec<std::sync::Arc<str>>, XsError> {
        self.note(path, true, true);
        self.working.directory(path, self.domid)
    }

    pub fn get_perms(&mut self, path: &str) -> Result<Perms, XsError> {
        self.note(path, true, false);
        self.working.get_perms(path, self.domid)
    }

    /// The node's children generation as this transaction sees it.
    pub fn children_gen(&mut self, path: &str) -> Option<u64> {
        self.note(path, true, true);
        self.working.get(path).map(|n| n.cgen)
    }

    pub fn write(&mut self, path: &str, value: &[u8], quota: &Quota) -> Result<(), XsError> {
        self.note(path, true, false);
        let changes = self.working.write(path, value, self.domid, quota)?;
        self.note_changes(&changes);
        self.log.push(Op::Write(path.into(), value.to_vec()));
        Ok(())
    }

    pub fn mkdir(&mut self, path: &str, quota: &Quota) -> Result<(), XsError> {
        self.note(path, true, false);
        let changes = self.working.mkdir(path, self.domid, quota)?;
        self.note_changes(&changes);
        self.log.push(Op::Mkdir(path.into()));
        Ok(())
    }

    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        self.note(path, true, false);
        let changes = self.working.rm(path, self.domid)?;
        self.note_changes(&changes);
        self.log.push(Op::Rm(path.into()));
        Ok(())
    }

    pub fn set_perms(&mut self, path: &str, perms: Perms, quota: &Quota) -> Result<(), XsError> {
        self.note(path, true, false);
        self.working
            .set_perms(path, perms.clone(), self.domid, quota)?;
        self.log.push(Op::SetPerms(path.into(), perms));
        Ok(())
    }

    /// Checks the commit rule against `live`; on success returns the new
    /// tree and the changes to announce. `live` itself is never modified.
    pub fn commit(
        self,
        live: &Store,
        quota: &Quota,
        strict: bool,
    ) -> Result<(Store, Vec<Change>), CommitError> {
        self.validate(live, strict)?;
        let mut next = live.clone();
        let mut changes = Vec::new();
        for op in &self.log {
            let done = match op {
                Op::Write(p, v) => next.write(p, v, self.domid, quota),
                Op::Mkdir(p) => next.mkdir(p, self.domid, quota),
                Op::Rm(p) => next.rm(p, self.domid),
                Op::SetPerms(p, perms) => next.set_perms(p, perms.clone(), self.domid, quota),
            };
            changes.extend(done.map_err(CommitError::Replay)?);
        }
        Ok((next, changes))
    }

    fn validate(&self, live: &Store, strict: bool) -> Result<(), CommitError> {
        for (path, access) in &self.accessed {
            let conflict = || Err(CommitError::Conflict { path: path.clone() });
            let (then, now) = match (self.snapshot.get(path), live.get(path)) {
                (None, None) => continue,
                (Some(then), Some(now)) if then.incarnation == now.incarnation => (then, now),
                _ => return conflict(),
            };
            if access.value && then.vgen != now.vgen {
                return conflict();
            }
            if access.children && then.cgen != now.cgen {
                if strict {
                    return conflict();
                }
                let mine = self.own_children.get(path);
                let changed = then
                    .children
                    .clone()
                    .symmetric_difference(now.children.clone());
                if mine.is_some_and(|mine| changed.iter().any(|name| mine.contains(&**name))) {
                    return conflict();
                }
            }
        }
        Ok(())
    }
}
