//! Node permissions: the first entry names the owner and what every other
//! domain may do; later entries grant specific domains. The owner and dom0
//! may do anything.

use crate::wire::XsError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    None,
    Read,
    Write,
    Both,
}

impl Access {
    fn letter(self) -> char {
        match self {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        }
    }

    fn reads(self) -> bool {
        matches!(self, Access::Read | Access::Both)
    }

    fn writes(self) -> bool {
        matches!(self, Access::Write | Access::Both)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm {
    pub domid: u32,
    pub access: Access,
}

/// At most this many entries per node.
pub const MAX_PERMS: usize = 64;
const DOMID_MAX: u32 = 0xffff;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Perms(Vec<Perm>);

impl Perms {
    /// Owned by `owner`, nobody else may do anything.
    pub fn owned_by(owner: u32) -> Perms {
        Perms(vec![Perm {
            domid: owner,
            access: Access::None,
        }])
    }

    /// Parses `n0`, `r5`, `w7`, `b1` strings; at least one, at most MAX_PERMS.
    pub fn parse(items: &[&[u8]]) -> Result<Perms, XsError> {
        if items.is_empty() || items.len() > MAX_PERMS {
            return Err(XsError::Inval);
        }
        let perms = items
            .iter()
            .map(|item| parse_one(item))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Perms(perms))
    }

    pub fn owner(&self) -> u32 {
        self.0[0].domid
    }

    pub fn with_owner(mut self, owner: u32) -> Perms {
        self.0[0].domid = owner;
        self
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|p| format!("{}{}", p.access.letter(), p.domid))
            .collect()
    }

    fn access_of(&self, domid: u32) -> Option<Access> {
        if domid == 0 || domid == self.owner() {
            return None; // unrestricted
        }
        let explicit = self.0[1..].iter().find(|p| p.domid == domid);
        Some(explicit.unwrap_or(&self.0[0]).access)
    }

    pub fn can_read(&self, domid: u32) -> bool {
        self.access_of(domid).is_none_or(Access::reads)
    }

    pub fn can_write(&self, domid: u32) -> bool {
        self.access_of(domid).is_none_or(Access::writes)
    }
}

fn parse_one(item: &[u8]) -> Result<Perm, XsError> {
    let (&letter, digits) = item.split_first().ok_or(XsError::Inval)?;
    let access = match letter {
        b'n' => Access::None,
        b'r' => Access::Read,
        b'w' => Access::Write,
        b'b' => Access::Both,
        _ => return Err(XsError::Inval),
    };
    let digits = std::str::from_utf8(digits).map_err(|_| XsError::Inval)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(XsError::Inval);
    }
    let domid: u32 = digits.parse().map_err(|_| XsError::Inval)?;
    if domid > DOMID_MAX {
        return Err(XsError::Inval);
    }
    Ok(Perm { domid, access })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn owner_default_and_grants() {
        let p = Perms::parse(&[b"r1", b"w2", b"n3", b"b4"]).unwrap();
        assert_eq!(p.owner(), 1);
        assert!(p.can_read(0) && p.can_write(0), "dom0 is privileged");
        assert!(p.can_read(1) && p.can_write(1), "the owner may do anything");
        assert!(!p.can_read(2) && p.can_write(2));
        assert!(!p.can_read(3) && !p.can_write(3));
        assert!(p.can_read(4) && p.can_write(4));
        assert!(p.can_read(9) && !p.can_write(9), "others get the default");
        assert_eq!(p.to_strings(), ["r1", "w2", "n3", "b4"]);
    }

    #[test]
    fn refuses_bad_entries() {
        for bad in [
            &[][..],
            &[&b"x1"[..]],
            &[b"r"],
            &[b"r-1"],
            &[b"r70000"],
            &[b"r1 "],
        ] {
            assert_eq!(Perms::parse(bad), Err(XsError::Inval));
        }
    }

    proptest! {
        #[test]
        fn arbitrary_entries_never_panic(items in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..8), 0..80)) {
            let refs: Vec<&[u8]> = items.iter().map(Vec::as_slice).collect();
            if let Ok(p) = Perms::parse(&refs) {
                let strings = p.to_strings();
                let back: Vec<&[u8]> = strings.iter().map(|s| s.as_bytes()).collect();
                prop_assert_eq!(Perms::parse(&back).unwrap(), p);
            }
        }
    }
}
