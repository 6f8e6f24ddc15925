//! XenStore paths: which are valid, and how relative ones resolve.

use crate::wire::XsError;

/// XENSTORE_ABS_PATH_MAX and XENSTORE_REL_PATH_MAX.
pub const ABS_PATH_MAX: usize = 3072;
pub const REL_PATH_MAX: usize = 2048;

fn valid_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'@')
}

/// Resolves `raw` for a connection of domain `domid`: absolute paths stay,
/// relative ones live under `/local/domain/<domid>`. Refuses empty paths,
/// characters outside `[A-Za-z0-9-/_@]`, doubled or trailing slashes (except
/// the root), and paths over the length limits.
pub fn resolve(raw: &[u8], domid: u32) -> Result<String, XsError> {
    if raw.is_empty() || !raw.iter().all(|&b| valid_char(b)) {
        return Err(XsError::Inval);
    }
    let text = std::str::from_utf8(raw).map_err(|_| XsError::Inval)?;
    let absolute = if let Some(rest) = text.strip_prefix('/') {
        if raw.len() > ABS_PATH_MAX {
            return Err(XsError::Inval);
        }
        if rest.is_empty() {
            return Ok("/".into());
        }
        text.to_string()
    } else {
        if raw.len() > REL_PATH_MAX {
            return Err(XsError::Inval);
        }
        format!("{}/{text}", domain_path(domid))
    };
    if absolute.ends_with('/') || absolute.contains("//") || absolute.len() > ABS_PATH_MAX {
        return Err(XsError::Inval);
    }
    Ok(absolute)
}

/// The home of a domain, which its relative paths are taken from.
pub fn domain_path(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

/// The parent of a non-root absolute path.
pub fn parent(path: &str) -> Option<&str> {
    match path.rfind('/') {
        Some(0) if path.len() > 1 => Some("/"),
        Some(0) | None => None,
        Some(i) => Some(&path[..i]),
    }
}

/// The last component of a non-root path.
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or("")
}

/// `/a/b` for parent `/a` and name `b`.
pub fn join(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// Whether `path` is `ancestor` or lies below it.
pub fn is_within(path: &str, ancestor: &str) -> bool {
    ancestor == "/"
        || path == ancestor
        || (path.starts_with(ancestor) && path.as_bytes().get(ancestor.len()) == Some(&b'/'))
}

/// Every ancestor of `path`, nearest first, root last.
pub fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(parent(path), |p| parent(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn resolves_and_refuses() {
        assert_eq!(resolve(b"/", 0).unwrap(), "/");
        assert_eq!(resolve(b"/a/b-c_d@e", 0).unwrap(), "/a/b-c_d@e");
        assert_eq!(
            resolve(b"device/vif", 3).unwrap(),
            "/local/domain/3/device/vif"
        );
        for bad in [
            &b""[..],
            b"/a/",
            b"//a",
            b"/a//b",
            b"/a b",
            b"/a\0b",
            b"/\xc3\xa9",
            b"/a/../b",
        ] {
            assert_eq!(
                resolve(bad, 0),
                Err(XsError::Inval),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("/{}", "a".repeat(ABS_PATH_MAX));
        assert_eq!(resolve(long.as_bytes(), 0), Err(XsError::Inval));
        let rel = "a".repeat(REL_PATH_MAX + 1);
        assert_eq!(resolve(rel.as_bytes(), 0), Err(XsError::Inval));
    }

    #[test]
    fn family() {
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
        assert_eq!(basename("/a/b"), "b");
        assert_eq!(join("/", "a"), "/a");
        assert!(is_within("/a/b", "/a") && is_within("/a", "/a") && is_within("/x", "/"));
        assert!(!is_within("/ab", "/a"));
        assert_eq!(
            ancestors("/a/b/c").collect::<Vec<_>>(),
            vec!["/a/b", "/a", "/"]
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_valid_paths_are_canonical(raw in proptest::collection::vec(any::<u8>(), 0..64), domid in 0u32..70000) {
            if let Ok(path) = resolve(&raw, domid) {
                prop_assert!(path.starts_with('/'));
                prop_assert!(path == "/" || (!path.ends_with('/') && !path.contains("//")));
                prop_assert_eq!(resolve(path.as_bytes(), domid).unwrap(), path.clone());
            }
        }
    }
}
