//! The daemon's logic, free of I/O: connections, the tree, transactions,
//! watches and domains. The server feeds it requests and delivers what it
//! returns, in order.

use std::collections::{BTreeSet, HashMap};

use crate::limits::Limits;
use crate::path;
use crate::perms::Perms;
use crate::store::{Change, ChangeKind, Store};
use crate::transaction::{CommitError, Transaction};
use crate::wire::{self, Frame, Message, MsgType, XsError, PAYLOAD_MAX};

pub type ConnId = u64;

struct Watch {
    /// Absolute path, or a special `@...` name.
    path: String,
    token: Vec<u8>,
    /// Set when the client gave a relative path: events are reported relative
    /// to this prefix too.
    relative_to: Option<String>,
}

struct Conn {
    domid: u32,
    watches: Vec<Watch>,
    transactions: HashMap<u32, Transaction>,
}

/// A message for a connection, in the order it must be sent.
pub type Outgoing = (ConnId, Message);

pub struct Daemon {
    store: Store,
    limits: Limits,
    strict: bool,
    conns: HashMap<ConnId, Conn>,
    next_conn: ConnId,
    next_tx: u32,
    introduced: BTreeSet<u32>,
    stats: Stats,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub commits: u64,
    pub conflicts: u64,
}

const SPECIAL_INTRODUCE: &str = "@introduceDomain";
const SPECIAL_RELEASE: &str = "@releaseDomain";
const DOMID_MAX: u32 = 0x7fef; // below DOMID_FIRST_RESERVED

impl Daemon {
    pub fn new(limits: Limits, strict: bool) -> Daemon {
        Daemon {
            store: Store::new(),
            limits,
            strict,
            conns: HashMap::new(),
            next_conn: 1,
            next_tx: 1,
            introduced: BTreeSet::new(),
            stats: Stats::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// A new socket client acting as dom0.
    pub fn connect(&mut self) -> ConnId {
        self.connect_as(0)
    }

    /// A new socket client acting as domain `domid` (unprivileged unless 0).
    /// A domain gets its home, `/local/domain/<domid>`, at its first
    /// connection, as a toolstack makes it when it builds a domain: there
    /// it may write what it publishes (a Conduit listener, its vchans'
    /// metadata), and nobody else may.
    pub fn connect_as(&mut self, domid: u32) -> ConnId {
        if domid != 0 {
            self.make_home(domid);
        }
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                domid,
                watches: Vec::new(),
                transactions: HashMap::new(),
            },
        );
        id
    }

    fn make_home(&mut self, domid: u32) {
        let home = path::domain_path(domid);
        if self.store.get(&home).is_some() {
            return;
        }
        let quota = self.limits.quota();
        let mut next = self.store.clone();
        let made = next
            .mkdir(&home, 0, &quota)
            .and_then(|_| next.set_perms(&home, Perms::owned_by(domid), 0, &quota));
        match made {
            Ok(_) => self.store = next,
            Err(e) => tracing::warn!(domid, ?e, "making a domain's home"),
        }
    }

    /// Drops the client's watches and open transactions.
    pub fn disconnect(&mut self, id: ConnId) {
        self.conns.remove(&id);
    }

    /// Serves one request; returns the reply followed by any watch events,
    /// all to be sent in this order.
    pub fn handle(&mut self, id: ConnId, frame: Frame) -> Vec<Outgoing> {
        let header = frame.header;
        let msg = match frame.message() {
            Ok(msg) => msg,
            Err(_) => {
                let reply = Message::new(
                    MsgType::Error,
                    header.req_id,
                    header.tx_id,
                    b"EINVAL\0".to_vec(),
                );
                return vec![(id, reply)];
            }
        };
        let mut out = Vec::new();
        let reply = match self.dispatch(id, &msg, &mut out) {
            Ok(payload) if payload.len() <= PAYLOAD_MAX => msg.reply(payload),
            Ok(_) => msg.error_reply(XsError::TooBig),
            Err(e) => msg.error_reply(e),
        };
        out.insert(0, (id, reply));
        out
    }

    fn conn(&mut self, id: ConnId) -> Result<&mut Conn, XsError> {
        self.conns.get_mut(&id).ok_or(XsError::Inval)
    }

    fn dispatch(
        &mut self,
        id: ConnId,
        msg: &Message,
        out: &mut Vec<Outgoing>,
    ) -> Result<Vec<u8>, XsError> {
        let args = msg.strings();
        let domid = self.conn(id)?.domid;
        let arg = |i: usize| args.get(i).copied().ok_or(XsError::Inval);
        let path_arg = |i: usize| path::resolve(arg(i)?, domid);
        match msg.kind {
            MsgType::Read => self.read(id, msg.tx_id, &path_arg(0)?),
            MsgType::Directory => self.directory(id, msg.tx_id, &path_arg(0)?),
            MsgType::DirectoryPart => self.directory_part(id, msg.tx_id, &path_arg(0)?, arg(1)?),
            MsgType::GetPerms => self.get_perms(id, msg.tx_id, &path_arg(0)?),
            MsgType::Write => {
                // WRITE is <path>|<value|>: the value is everything after the
                // first NUL, NULs included.
                let split = msg
                    .payload
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or(XsError::Inval)?;
                let path = path::resolve(&msg.payload[..split], domid)?;
                self.modify(
                    id,
                    msg.tx_id,
                    out,
                    |tx, quota| tx.write(&path, &msg.payload[split + 1..], quota),
                    |s, q, d| s.write(&path, &msg.payload[split + 1..], d, q),
                )
            }
            MsgType::Mkdir => {
                let path = path_arg(0)?;
                self.modify(
                    id,
                    msg.tx_id,
                    out,
                    |tx, quota| tx.mkdir(&path, quota),
                    |s, q, d| s.mkdir(&path, d, q),
                )
            }
            MsgType::Rm => {
                let path = path_arg(0)?;
                self.modify(
                    id,
                    msg.tx_id,
                    out,
                    |tx, _| tx.rm(&path),
                    |s, _, d| s.rm(&path, d),
                )
            }
            MsgType::SetPerms => {
                let path = path_arg(0)?;
                let perms = Perms::parse(args.get(1..).unwrap_or(&[]))?;
                self.modify(
                    id,
                    msg.tx_id,
                    out,
                    |tx, quota| tx.set_perms(&path, perms.clone(), quota),
                    |s, q, d| s.set_perms(&path, perms.clone(), d, q),
                )
            }
            MsgType::Watch => self.watch(id, arg(0)?, arg(1)?, out),
            MsgType::Unwatch => self.unwatch(id, arg(0)?, arg(1)?),
            MsgType::ResetWatches => {
                let conn = self.conn(id)?;
                conn.watches.clear();
                conn.transactions.clear();
                Ok(wire::ok())
            }
            MsgType::TransactionStart => self.transaction_start(id, msg.tx_id),
            MsgType::TransactionEnd => self.transaction_end(id, msg.tx_id, arg(0)?, out),
            MsgType::GetDomainPath => Ok(with_nul(path::domain_path(parse_domid(arg(0)?)?))),
            MsgType::IsDomainIntroduced => {
                let d = parse_domid(arg(0)?)?;
                Ok(if d == 0 || self.introduced.contains(&d) {
                    b"T\0".to_vec()
                } else {
                    b"F\0".to_vec()
                })
            }
            MsgType::Introduce => self.introduce(domid, arg(0)?, args.len(), out),
            MsgType::Release => self.release(domid, arg(0)?, out),
            MsgType::Resume => {
                let d = parse_domid(arg(0)?)?;
                privileged(domid)?;
                if self.introduced.contains(&d) {
                    Ok(wire::ok())
                } else {
                    Err(XsError::NoEnt)
                }
            }
            MsgType::Control | MsgType::SetTarget | MsgType::Restrict => Err(XsError::NoSys),
            MsgType::WatchEvent | MsgType::Error => Err(XsError::Inval),
        }
    }

    fn transaction(&mut self, id: ConnId, tx_id: u32) -> Result<&mut Transaction, XsError> {
        self.conn(id)?
            .transactions
            .get_mut(&tx_id)
            .ok_or(XsError::NoEnt)
    }

    fn read(&mut self, id: ConnId, tx_id: u32, path: &str) -> Result<Vec<u8>, XsError> {
        let domid = self.conn(id)?.domid;
        let value = if tx_id == 0 {
            self.store.read(path, domid)?
        } else {
            self.transaction(id, tx_id)?.read(path)?
        };
        Ok(value.to_vec())
    }

    fn children(
        &mut self,
        id: ConnId,
        tx_id: u32,
        path: &str,
    ) -> Result<(Vec<std::sync::Arc<str>>, u64), XsError> {
        let domid = self.conn(id)?.domid;
        if tx_id == 0 {
            let names = self.store.directory(path, domid)?;
            Ok((names, self.store.get(path).map_or(0, |n| n.cgen)))
        } else {
            let tx = self.transaction(id, tx_id)?;
            let names = tx.directory(path)?;
            Ok((names, tx.children_gen(path).unwrap_or(0)))
        }
    }

    fn directory(&mut self, id: ConnId, tx_id: u32, path: &str) -> Result<Vec<u8>, XsError> {
        let (names, _) = self.children(id, tx_id, path)?;
        Ok(wire::join_strings(names.iter().map(|n| n.as_bytes())))
    }

    /// `<gen>|<child>|*` from byte `offset` of the full listing, as many
    /// whole names as fit; a final empty string marks the end.
    fn directory_part(
        &mut self,
        id: ConnId,
        tx_id: u32,
        path: &str,
        offset: &[u8],
    ) -> Result<Vec<u8>, XsError> {
        let offset: usize = std::str::from_utf8(offset)
            .ok()
            .and_then(|o| o.parse().ok())
            .ok_or(XsError::Inval)?;
        let (names, gen) = self.children(id, tx_id, path)?;
        let all = wire::join_strings(names.iter().map(|n| n.as_bytes()));
        if offset > all.len() || (offset > 0 && all[offset - 1] != 0) {
            return Err(XsError::Inval);
        }
        let mut out = with_nul(gen.to_string());
        let rest = &all[offset..];
        let room = PAYLOAD_MAX - out.len() - 1;
        if rest.len() <= room {
            out.extend_from_slice(rest);
            out.push(0);
        } else {
            let cut = rest[..room]
                .iter()
                .rposition(|&b| b == 0)
                .map_or(0, |i| i + 1);
            if cut == 0 {
                return Err(XsError::TooBig);
            }
            out.extend_from_slice(&rest[..cut]);
        }
        Ok(out)
    }

    fn get_perms(&mut self, id: ConnId, tx_id: u32, path: &str) -> Result<Vec<u8>, XsError> {
        let domid = self.conn(id)?.domid;
        let perms = if tx_id == 0 {
            self.store.get_perms(path, domid)?
        } else {
            self.transaction(id, tx_id)?.get_perms(path)?
        };
        Ok(wire::join_strings(
            perms.to_strings().iter().map(|s| s.as_bytes()),
        ))
    }

    /// Applies a modification directly (firing watches) or inside a transaction.
    fn modify(
        &mut self,
        id: ConnId,
        tx_id: u32,
        out: &mut Vec<Outgoing>,
        in_tx: impl FnOnce(&mut Transaction, &crate::store::Quota) -> Result<(), XsError>,
        direct: impl FnOnce(&mut Store, &crate::store::Quota, u32) -> Result<Vec<Change>, XsError>,
    ) -> Result<Vec<u8>, XsError> {
        let quota = self.limits.quota();
        if tx_id != 0 {
            in_tx(self.transaction(id, tx_id)?, &quota)?;
        } else {
            let domid = self.conn(id)?.domid;
            // Work on a copy so a failure half-way leaves the tree unchanged.
            let mut next = self.store.clone();
            let changes = direct(&mut next, &quota, domid)?;
            self.store = next;
            self.fire(&changes, out);
        }
        Ok(wire::ok())
    }

    fn transaction_start(&mut self, id: ConnId, tx_id: u32) -> Result<Vec<u8>, XsError> {
        if tx_id != 0 {
            return Err(XsError::Inval);
        }
        let limit = self.limits.transactions_per_conn;
        let tid = self.next_tx;
        self.next_tx = self.next_tx.checked_add(1).filter(|&t| t != 0).unwrap_or(1);
        let store = self.store.clone();
        let conn = self.conn(id)?;
        if conn.transactions.len() >= limit {
            return Err(XsError::NoSpc);
        }
        conn.transactions
            .insert(tid, Transaction::start(&store, conn.domid));
        Ok(with_nul(tid.to_string()))
    }

    fn transaction_end(
        &mut self,
        id: ConnId,
        tx_id: u32,
        verdict: &[u8],
        out: &mut Vec<Outgoing>,
    ) -> Result<Vec<u8>, XsError> {
        let commit = match verdict {
            b"T" => true,
            b"F" => false,
            _ => return Err(XsError::Inval),
        };
        let tx = self
            .conn(id)?
            .transactions
            .remove(&tx_id)
            .ok_or(XsError::NoEnt)?;
        if !commit {
            return Ok(wire::ok());
        }
        match tx.commit(&self.store, &self.limits.quota(), self.strict) {
            Ok((store, changes)) => {
                self.store = store;
                self.stats.commits += 1;
                self.fire(&changes, out);
                Ok(wire::ok())
            }
            Err(CommitError::Conflict { path }) => {
                self.stats.conflicts += 1;
                tracing::debug!(path, "transaction conflict");
                Err(XsError::Again)
            }
            Err(CommitError::Replay(e)) => Err(e),
        }
    }

    fn watch(
        &mut self,
        id: ConnId,
        raw_path: &[u8],
        token: &[u8],
        out: &mut Vec<Outgoing>,
    ) -> Result<Vec<u8>, XsError> {
        let limit = self.limits.watches_per_conn;
        let conn = self.conn(id)?;
        let (path, relative_to) = watch_path(raw_path, conn.domid)?;
        if conn
            .watches
            .iter()
            .any(|w| w.path == path && w.token == token)
        {
            return Err(XsError::Exist);
        }
        if conn.watches.len() >= limit {
            return Err(XsError::TooBig);
        }
        // A new watch fires once at once, after the reply.
        out.push((id, event(raw_path, token)));
        conn.watches.push(Watch {
            path,
            token: token.to_vec(),
            relative_to,
        });
        Ok(wire::ok())
    }

    fn unwatch(&mut self, id: ConnId, raw_path: &[u8], token: &[u8]) -> Result<Vec<u8>, XsError> {
        let conn = self.conn(id)?;
        let (path, _) = watch_path(raw_path, conn.domid)?;
        let before = conn.watches.len();
        conn.watches
            .retain(|w| !(w.path == path && w.token == token));
        if conn.watches.len() == before {
            return Err(XsError::NoEnt);
        }
        Ok(wire::ok())
    }

    fn introduce(
        &mut self,
        domid: u32,
        target: &[u8],
        nargs: usize,
        out: &mut Vec<Outgoing>,
    ) -> Result<Vec<u8>, XsError> {
        privileged(domid)?;
        let d = parse_domid(target)?;
        if d == 0 || nargs < 3 {
            return Err(XsError::Inval);
        }
        // There is no hypervisor here: introducing records the domain (for
        // IS_DOMAIN_INTRODUCED and @introduceDomain) without mapping a ring.
        if self.introduced.insert(d) {
            self.fire_special(SPECIAL_INTRODUCE, out);
        }
        Ok(wire::ok())
    }

    fn release(
        &mut self,
        domid: u32,
        target: &[u8],
        out: &mut Vec<Outgoing>,
    ) -> Result<Vec<u8>, XsError> {
        privileged(domid)?;
        let d = parse_domid(target)?;
        if !self.introduced.remove(&d) {
            return Err(XsError::NoEnt);
        }
        self.fire_special(SPECIAL_RELEASE, out);
        Ok(wire::ok())
    }

    fn fire_special(&self, name: &str, out: &mut Vec<Outgoing>) {
        for (&id, conn) in &self.conns {
            for w in conn.watches.iter().filter(|w| w.path == name) {
                out.push((id, event(name.as_bytes(), &w.token)));
            }
        }
    }

    /// Queues a WATCH_EVENT for every watch a change lies at or below, and
    /// for watches below a removed node.
    fn fire(&self, changes: &[Change], out: &mut Vec<Outgoing>) {
        for change in changes {
            for (&id, conn) in &self.conns {
                for w in &conn.watches {
                    let epath = if path::is_within(&change.path, &w.path) {
                        change.path.as_str()
                    } else if change.kind == ChangeKind::Removed
                        && path::is_within(&w.path, &change.path)
                    {
                        w.path.as_str()
                    } else {
                        continue;
                    };
                    if !self.may_see(conn.domid, epath) {
                        continue;
                    }
                    let shown = match &w.relative_to {
                        Some(prefix) => epath
                            .strip_prefix(prefix.as_str())
                            .map(|r| r.trim_start_matches('/'))
                            .unwrap_or(epath),
                        None => epath,
                    };
                    out.push((id, event(shown.as_bytes(), &w.token)));
                }
            }
        }
    }

    /// Events go to domains that can read the node, or (once it is gone)
    /// its nearest existing ancestor.
    fn may_see(&self, domid: u32, epath: &str) -> bool {
        if domid == 0 {
            return true;
        }
        std::iter::once(epath)
            .chain(path::ancestors(epath))
            .find_map(|p| self.store.get(p))
            .is_some_and(|n| n.perms.can_read(domid))
    }
}

fn watch_path(raw: &[u8], domid: u32) -> Result<(String, Option<String>), XsError> {
    if raw.first() == Some(&b'@') {
        let name = std::str::from_utf8(raw).map_err(|_| XsError::Inval)?;
        if name.len() > path::ABS_PATH_MAX || name.contains('/') {
            return Err(XsError::Inval);
        }
        return Ok((name.to_string(), None));
    }
    let absolute = path::resolve(raw, domid)?;
    let relative_to = (raw.first() != Some(&b'/')).then(|| path::domain_path(domid));
    Ok((absolute, relative_to))
}

fn event(epath: &[u8], token: &[u8]) -> Message {
    Message::new(
        MsgType::WatchEvent,
        0,
        0,
        wire::join_strings([epath, token]),
    )
}

fn with_nul(s: String) -> Vec<u8> {
    let mut v = s.into_bytes();
    v.push(0);
    v
}

fn parse_domid(raw: &[u8]) -> Result<u32, XsError> {
    let text = std::str::from_utf8(raw).map_err(|_| XsError::Inval)?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(XsError::Inval);
    }
    text.parse()
        .ok()
        .filter(|&d| d <= DOMID_MAX)
        .ok_or(XsError::Inval)
}

fn privileged(domid: u32) -> Result<(), XsError> {
    if domid == 0 {
        Ok(())
    } else {
        Err(XsError::Perm)
    }
}
