//! The tree: nodes by path in a persistent map, so a transaction's snapshot
//! is a cheap clone. Each node carries generation numbers that transactions
//! compare at commit: `vgen` changes with its value or permissions, `cgen`
//! with its set of children, `incarnation` when it is created anew.

use std::sync::Arc;

use imbl::{HashMap, OrdSet};

use crate::path;
use crate::perms::Perms;
use crate::wire::XsError;

#[derive(Debug, Clone)]
pub struct Node {
    pub value: Arc<[u8]>,
    pub perms: Perms,
    pub children: OrdSet<Arc<str>>,
    pub vgen: u64,
    pub cgen: u64,
    pub incarnation: u64,
}

/// A change that watches may want to hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: String,
    pub kind: ChangeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Created,
    /// Value or permissions.
    Modified,
    /// The node and everything below it.
    Removed,
}

impl Change {
    fn new(path: &str, kind: ChangeKind) -> Change {
        Change {
            path: path.into(),
            kind,
        }
    }
}

/// Limits that protect the tree from one client.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    /// Nodes one domain may own.
    pub nodes_per_domain: usize,
}

#[derive(Debug, Clone)]
pub struct Store {
    nodes: HashMap<Arc<str>, Node>,
    owned: HashMap<u32, usize>,
    gen: u64,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// A tree with only the root, owned by dom0.
    pub fn new() -> Store {
        let root = Node {
            value: Arc::from(&b""[..]),
            perms: Perms::owned_by(0),
            children: OrdSet::new(),
            vgen: 1,
            cgen: 1,
            incarnation: 1,
        };
        Store {
            nodes: HashMap::unit(Arc::from("/"), root),
            owned: HashMap::unit(0, 1),
            gen: 1,
        }
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn owned_by(&self, domid: u32) -> usize {
        self.owned.get(&domid).copied().unwrap_or(0)
    }

    fn next_gen(&mut self) -> u64 {
        self.gen += 1;
        self.gen
    }

    fn readable(&self, path: &str, domid: u32) -> Result<&Node, XsError> {
        let node = self.nodes.get(path).ok_or(XsError::NoEnt)?;
        if node.perms.can_read(domid) {
            Ok(node)
        } else {
            Err(XsError::Access)
        }
    }

    pub fn read(&self, path: &str, domid: u32) -> Result<Arc<[u8]>, XsError> {
        Ok(self.readable(path, domid)?.value.clone())
    }

    pub fn directory(&self, path: &str, domid: u32) -> Result<Vec<Arc<str>>, XsError> {
        Ok(self
            .readable(path, domid)?
            .children
            .iter()
            .cloned()
            .collect())
    }

    pub fn get_perms(&self, path: &str, domid: u32) -> Result<Perms, XsError> {
        Ok(self.readable(path, domid)?.perms.clone())
    }

    /// Names the missing ancestors of `path` (outermost first) and checks
    /// that `domid` may create them.
    fn missing(&self, path: &str, domid: u32) -> Result<Vec<String>, XsError> {
        let mut missing = vec![path.to_string()];
        for ancestor in path::ancestors(path) {
            match self.nodes.get(ancestor) {
                Some(node) => {
                    if !node.perms.can_write(domid) {
                        return Err(XsError::Access);
                    }
                    missing.reverse();
                    return Ok(missing);
                }
                None => missing.push(ancestor.to_string()),
            }
        }
        Err(XsError::NoEnt) // no root: cannot happen, the root is never removed
    }

    /// Creates `path` (which is missing) and its missing ancestors with
    /// empty values, each inheriting its parent's permissions, owned by the
    /// creator unless it is dom0.
    fn create(
        &mut self,
        path: &str,
        value: &[u8],
        domid: u32,
        quota: &Quota,
        changes: &mut Vec<Change>,
    ) -> Result<(), XsError> {
        let missing = self.missing(path, domid)?;
        let parent_perms = self.nodes[path::parent(&missing[0]).unwrap_or("/")]
            .perms
            .clone();
        let perms = if domid == 0 {
            parent_perms
        } else {
            parent_perms.with_owner(domid)
        };
        let owner = perms.owner();
        if self.owned_by(owner) + missing.len() > quota.nodes_per_domain {
            return Err(XsError::Quota);
        }
        for (i, p) in missing.iter().enumerate() {
            let gen = self.next_gen();
            let value: Arc<[u8]> = if i + 1 == missing.len() {
                Arc::from(value)
            } else {
                Arc::from(&b""[..])
            };
            let node = Node {
                value,
                perms: perms.clone(),
                children: OrdSet::new(),
                vgen: gen,
                cgen: gen,
                incarnation: gen,
            };
            self.nodes.insert(Arc::from(p.as_str()), node);
            self.link(p);
            changes.push(Change::new(p, ChangeKind::Created));
        }
        *self.owned.entry(owner).or_insert(0) += missing.len();
        Ok(())
    }

    /// Adds `path` to its parent's children.
    fn link(&mut self, path: &str) {
        let parent = path::parent(path).expect("not the root");
        let gen = self.next_gen();
        let node = self.nodes.get_mut(parent).expect("parent exists");
        node.children.insert(Arc::from(path::basename(path)));
        node.cgen = gen;
    }

    pub fn write(
        &mut self,
        path: &str,
        value: &[u8],
        domid: u32,
        quota: &Quota,
    ) -> Result<Vec<Change>, XsError> {
        let mut changes = Vec::new();
        if self.nodes.contains_key(path) {
            let gen = self.next_gen();
            let node = self.nodes.get_mut(path).expect("checked");
            if !node.perms.can_write(domid) {
                return Err(XsError::Access);
            }
            node.value = Arc::from(value);
            node.vgen = gen;
            changes.push(Change::new(path, ChangeKind::Modified));
        } else {
            self.create(path, value, domid, quota, &mut changes)?;
        }
        Ok(changes)
    }

    pub fn mkdir(&mut self, path: &str, domid: u32, quota: &Quota) -> Result<Vec<Change>, XsError> {
        let mut changes = Vec::new();
        if !self.nodes.contains_key(path) {
            self.create(path, b"", domid, quota, &mut changes)?;
        }
        Ok(changes)
    }

    /// Removes `path` and everything below it. Removing a missing node whose
    /// parent exists is not an error; the root cannot be removed.
    pub fn rm(&mut self, path: &str, domid: u32) -> Result<Vec<Change>, XsError> {
        let Some(parent) = path::parent(path) else {
            return Err(XsError::Inval);
        };
        let Some(node) = self.nodes.get(path) else {
            return if self.nodes.contains_key(parent) {
                Ok(Vec::new())
            } else {
                Err(XsError::NoEnt)
            };
        };
        if !node.perms.can_write(domid) {
            return Err(XsError::Access);
        }
        let mut stack = vec![path.to_string()];
        while let Some(p) = stack.pop() {
            if let Some(node) = self.nodes.remove(p.as_str()) {
                if let Some(count) = self.owned.get_mut(&node.perms.owner()) {
                    *count = count.saturating_sub(1);
                }
                stack.extend(node.children.iter().map(|c| path::join(&p, c)));
            }
        }
        let gen = self.next_gen();
        let parent_node = self
            .nodes
            .get_mut(parent)
            .expect("parent of an existing node exists");
        parent_node.children.remove(path::basename(path));
        parent_node.cgen = gen;
        Ok(vec![Change::new(path, ChangeKind::Removed)])
    }

    /// Only dom0 and the node's owner may change its permissions.
    pub fn set_perms(
        &mut self,
        path: &str,
        perms: Perms,
        domid: u32,
        quota: &Quota,
    ) -> Result<Vec<Change>, XsError> {
        let node = self.nodes.get(path).ok_or(XsError::NoEnt)?;
        let old_owner = node.perms.owner();
        if domid != 0 && domid != old_owner {
            return Err(XsError::Access);
        }
        let new_owner = perms.owner();
        if new_owner != old_owner && self.owned_by(new_owner) + 1 > quota.nodes_per_domain {
            return Err(XsError::Quota);
        }
        let gen = self.next_gen();
        let node = self.nodes.get_mut(path).expect("checked");
        node.perms = perms;
        node.vgen = gen;
        if new_owner != old_owner {
            if let Some(count) = self.owned.get_mut(&old_owner) {
                *count = count.saturating_sub(1);
            }
            *self.owned.entry(new_owner).or_insert(0) += 1;
        }
        Ok(vec![Change::new(path, ChangeKind::Modified)])
    }

    /// Checks the invariants: every node's parent exists and lists it, every
    /// listed child exists, ownership counts match. For tests and debugging.
    pub fn check(&self) -> Result<(), String> {
        let mut counts: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
        for (p, node) in self.nodes.iter() {
            *counts.entry(node.perms.owner()).or_default() += 1;
            if let Some(parent) = path::parent(p) {
                let listed = self
                    .nodes
                    .get(parent)
                    .is_some_and(|n| n.children.contains(path::basename(p)));
                if !listed {
                    return Err(format!("{p} is not listed by its parent"));
                }
            }
            for child in node.children.iter() {
                if !self.nodes.contains_key(path::join(p, child).as_str()) {
                    return Err(format!("{p} lists missing child {child}"));
                }
            }
        }
        for (domid, count) in counts {
            if self.owned_by(domid) != count {
                return Err(format!(
                    "domain {domid} owns {count} nodes, counted {}",
                    self.owned_by(domid)
                ));
            }
        }
        Ok(())
    }

    /// Every path, for dumps and tests.
    pub fn paths(&self) -> Vec<String> {
        let mut v: Vec<String> = self.nodes.keys().map(|k| k.to_string()).collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Quota = Quota {
        nodes_per_domain: 100,
    };

    #[test]
    fn write_creates_parents_and_rm_removes_subtrees() {
        let mut s = Store::new();
        let changes = s.write("/a/b/c", b"v", 0, &Q).unwrap();
        assert_eq!(
            changes.iter().map(|c| c.path.as_str()).collect::<Vec<_>>(),
            ["/a", "/a/b", "/a/b/c"]
        );
        assert_eq!(&*s.read("/a/b/c", 0).unwrap(), b"v");
        assert_eq!(&*s.read("/a", 0).unwrap(), b"");
        assert_eq!(s.directory("/a", 0).unwrap(), vec![Arc::from("b")]);
        s.check().unwrap();
        assert_eq!(
            s.rm("/a/b", 0).unwrap(),
            vec![Change::new("/a/b", ChangeKind::Removed)]
        );
        assert_eq!(s.read("/a/b/c", 0), Err(XsError::NoEnt));
        assert_eq!(s.rm("/a/zz", 0), Ok(vec![]), "missing node, parent exists");
        assert_eq!(s.rm("/q/zz", 0), Err(XsError::NoEnt));
        assert_eq!(s.rm("/", 0), Err(XsError::Inval));
        s.check().unwrap();
    }

    #[test]
    fn permissions_are_enforced() {
        let mut s = Store::new();
        s.write("/d", b"", 0, &Q).unwrap();
        s.set_perms("/d", Perms::parse(&[b"n0", b"r5"]).unwrap(), 0, &Q)
            .unwrap();
        assert!(s.read("/d", 5).is_ok());
        assert_eq!(s.read("/d", 6), Err(XsError::Access));
        assert_eq!(s.write("/d/x", b"", 5, &Q), Err(XsError::Access));
        s.set_perms("/d", Perms::parse(&[b"n0", b"b5"]).unwrap(), 0, &Q)
            .unwrap();
        s.write("/d/x", b"1", 5, &Q).unwrap();
        assert_eq!(
            s.get_perms("/d/x", 0).unwrap().owner(),
            5,
            "domains own what they create"
        );
        assert_eq!(
            s.set_perms("/d", Perms::owned_by(5), 5, &Q),
            Err(XsError::Access),
            "only the owner"
        );
        s.check().unwrap();
    }

    #[test]
    fn node_quota_leaves_the_tree_unchanged() {
        let q = Quota {
            nodes_per_domain: 4,
        };
        let mut s = Store::new();
        s.write("/a/b", b"", 0, &q).unwrap(); // root + 2
        let before = s.paths();
        assert_eq!(s.write("/c/d", b"", 0, &q), Err(XsError::Quota));
        assert_eq!(s.paths(), before);
        s.write("/c", b"", 0, &q).unwrap();
        s.check().unwrap();
    }

    #[test]
    fn generations_separate_values_from_children() {
        let mut s = Store::new();
        s.write("/p", b"", 0, &Q).unwrap();
        let (v, c) = (s.get("/p").unwrap().vgen, s.get("/p").unwrap().cgen);
        s.write("/p/x", b"", 0, &Q).unwrap();
        assert_eq!(s.get("/p").unwrap().vgen, v);
        assert!(s.get("/p").unwrap().cgen > c);
        s.write("/p", b"new", 0, &Q).unwrap();
        assert!(s.get("/p").unwrap().vgen > v);
    }
}
