//! Who may connect to a listener: unikernels of its own group (a
//! Kubernetes namespace, or a containerd namespace for `ctr run`) by
//! default, and whoever its allow-list names:
//!
//! ```text
//! web          the unikernel named web, whatever its group
//! team-b/web   web, only while it is in team-b
//! team-b/*     every unikernel of team-b
//! ```
//!
//! A refusal says why, in words the connecting side's operator can act on.

use std::fmt;

use jitsu_vchan::rendezvous::valid_label;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Name(String),
    Member { group: String, name: String },
    Group(String),
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Name(name) => f.write_str(name),
            Rule::Member { group, name } => write!(f, "{group}/{name}"),
            Rule::Group(group) => write!(f, "{group}/*"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    group: String,
    allow: Vec<Rule>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("Conduit group {0:?} is not a DNS label (a-z, 0-9, '-', at most 63)")]
    Group(String),
    #[error("allow-list entry {0:?}: want NAME, GROUP/NAME or GROUP/* (DNS labels)")]
    Entry(String),
}

impl Policy {
    /// `allow`: comma-separated entries (spaces around them are ignored).
    pub fn new(group: &str, allow: &str) -> Result<Policy, PolicyError> {
        if !valid_label(group) {
            return Err(PolicyError::Group(group.into()));
        }
        let allow = allow
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(parse_rule)
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            group: group.into(),
            allow,
        })
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// Whether `client` of `group` may connect; if not, why.
    pub fn check(&self, client: &str, group: &str) -> Result<(), String> {
        if group == self.group {
            return Ok(());
        }
        let allowed = self.allow.iter().any(|rule| match rule {
            Rule::Name(name) => name == client,
            Rule::Member { group: g, name } => g == group && name == client,
            Rule::Group(g) => g == group,
        });
        if allowed {
            return Ok(());
        }
        let list = if self.allow.is_empty() {
            "it has no allow-list".to_string()
        } else {
            let rules: Vec<String> = self.allow.iter().map(Rule::to_string).collect();
            format!("not on its allow-list ({})", rules.join(", "))
        };
        Err(format!(
            "{client} is in group {group}, not the listener's group {}, and {list}",
            self.group
        ))
    }
}

fn parse_rule(entry: &str) -> Result<Rule, PolicyError> {
    let bad = || PolicyError::Entry(entry.into());
    match entry.split_once('/') {
        None if valid_label(entry) => Ok(Rule::Name(entry.into())),
        Some((group, "*")) if valid_label(group) => Ok(Rule::Group(group.into())),
        Some((group, name)) if valid_label(group) && valid_label(name) => Ok(Rule::Member {
            group: group.into(),
            name: name.into(),
        }),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_group_is_allowed_and_others_only_by_name() {
        let policy = Policy::new("team-a", " web, team-b/api ,ops/* ").unwrap();
        assert_eq!(policy.check("anything", "team-a"), Ok(()));
        assert_eq!(policy.check("web", "team-z"), Ok(()));
        assert_eq!(policy.check("api", "team-b"), Ok(()));
        assert_eq!(policy.check("any", "ops"), Ok(()));
        let why = policy.check("api", "team-c").unwrap_err();
        assert!(
            why.contains("api is in group team-c")
                && why.contains("team-a")
                && why.contains("web, team-b/api, ops/*"),
            "{why}"
        );
        let closed = Policy::new("team-a", "").unwrap();
        assert!(closed
            .check("web", "team-b")
            .unwrap_err()
            .contains("no allow-list"));
    }

    #[test]
    fn bad_groups_and_entries_are_refused() {
        assert_eq!(
            Policy::new("Team", ""),
            Err(PolicyError::Group("Team".into()))
        );
        for bad in ["a/b/c", "/web", "web/", "*", "a b", "*/web", "UPPER"] {
            assert_eq!(
                Policy::new("a", bad),
                Err(PolicyError::Entry(bad.into())),
                "{bad}"
            );
        }
    }
}
