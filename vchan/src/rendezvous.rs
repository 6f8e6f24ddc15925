//! Where Conduit's ends find each other in XenStore, as ocaml-conduit lays
//! it out:
//!
//! ```text
//! /conduit/<name>                     the listener's registration (its domid)
//! /conduit/<server>/<client>/<port>   a connection request, which the
//!                                     listener sees through its watch
//! /local/domain/<srv>/data/vchan/<cli>/<port>/   the channel's metadata
//! ```
//!
//! Names and ports are DNS labels (`a-z`, `0-9`, `-`, at most 63, no `-`
//! at either end), so a path never holds a separator or a wildcard that
//! was not ours. What comes back from the store (a watch's path) is parsed
//! strictly: anything else is refused, never guessed at.

use core::fmt::{self, Write};

/// The root of the rendezvous tree.
pub const ROOT: &str = "/conduit";

/// Whether `label` may be a Conduit name or port.
pub fn valid_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// A connection request: `client` asks `server` for a channel on `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    pub server: &'a str,
    pub client: &'a str,
    pub port: &'a str,
}

/// Why a rendezvous path or label is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not under [`ROOT`].
    NotConduit,
    /// Not `/conduit/<server>/<client>/<port>` (too few or many parts).
    Shape,
    /// A part that is not a valid label.
    Label,
    /// The path does not fit the buffer it is written to.
    Overflow,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotConduit => "not a path under /conduit",
            PathError::Shape => "not /conduit/<server>/<client>/<port>",
            PathError::Label => {
                "a name or port that is not a DNS label (a-z, 0-9, '-', at most 63)"
            }
            PathError::Overflow => "the path does not fit its buffer",
        })
    }
}

fn checked(label: &str) -> Result<&str, PathError> {
    valid_label(label).then_some(label).ok_or(PathError::Label)
}

/// Writes `/conduit/<name>`, where a listener registers.
pub fn write_listener<W: Write>(out: &mut W, name: &str) -> Result<(), PathError> {
    let name = checked(name)?;
    write!(out, "{ROOT}/{name}").map_err(|_| PathError::Overflow)
}

impl<'a> Request<'a> {
    pub fn new(server: &'a str, client: &'a str, port: &'a str) -> Result<Request<'a>, PathError> {
        Ok(Request {
            server: checked(server)?,
            client: checked(client)?,
            port: checked(port)?,
        })
    }

    /// Parses a request's path, as a watch on `/conduit/<server>` reports
    /// it.
    pub fn parse(path: &'a str) -> Result<Request<'a>, PathError> {
        let rest = path
            .strip_prefix(ROOT)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or(PathError::NotConduit)?;
        let mut parts = rest.split('/');
        let (Some(server), Some(client), Some(port), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(PathError::Shape);
        };
        Request::new(server, client, port)
    }

    /// Writes the request's path.
    pub fn write_path<W: Write>(&self, out: &mut W) -> fmt::Result {
        write!(out, "{ROOT}/{}/{}/{}", self.server, self.client, self.port)
    }

    /// Writes the folder of the channel's metadata, under the server's
    /// domain (`server_domid`), for the client's (`client_domid`).
    pub fn write_metadata_dir<W: Write>(
        &self,
        out: &mut W,
        server_domid: u32,
        client_domid: u32,
    ) -> fmt::Result {
        write!(
            out,
            "/local/domain/{server_domid}/data/vchan/{client_domid}/{}",
            self.port
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn labels_are_dns_labels() {
        for good in ["a", "kv", "hello-http", "x1", &"a".repeat(63)] {
            assert!(valid_label(good), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a.b",
            "a/b",
            "*",
            "a b",
            &"a".repeat(64),
        ] {
            assert!(!valid_label(bad), "{bad}");
        }
    }

    #[test]
    fn paths_are_written_and_parsed_back() {
        let mut path = String::new();
        write_listener(&mut path, "kv").unwrap();
        assert_eq!(path, "/conduit/kv");
        assert_eq!(
            write_listener(&mut String::new(), "../x"),
            Err(PathError::Label)
        );
        let request = Request::new("kv", "web", "http").unwrap();
        let mut path = String::new();
        request.write_path(&mut path).unwrap();
        assert_eq!(path, "/conduit/kv/web/http");
        assert_eq!(Request::parse(&path), Ok(request));
        let mut dir = String::new();
        request.write_metadata_dir(&mut dir, 7, 9).unwrap();
        assert_eq!(dir, "/local/domain/7/data/vchan/9/http");
        assert_eq!(Request::parse("/conduit/kv"), Err(PathError::Shape));
        assert_eq!(
            Request::parse("/conduit/kv/web/http/x"),
            Err(PathError::Shape)
        );
        assert_eq!(
            Request::parse("/conduitx/kv/web/http"),
            Err(PathError::NotConduit)
        );
        assert_eq!(Request::parse("/conduit/kv//http"), Err(PathError::Label));
    }

    proptest! {
        /// Any path at all: parsed or refused, never a panic; what parses
        /// is made of valid labels and writes back to the same path.
        #[test]
        fn any_path_parses_strictly(path in "(/conduit/)?[a-z0-9/.*-]{0,80}|\\PC{0,80}") {
            if let Ok(request) = Request::parse(&path) {
                prop_assert!(valid_label(request.server));
                prop_assert!(valid_label(request.client));
                prop_assert!(valid_label(request.port));
                let mut again = String::new();
                request.write_path(&mut again).unwrap();
                prop_assert_eq!(again, path);
            }
        }

        /// Every valid request round-trips through its path.
        #[test]
        fn requests_round_trip(
            server in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
            client in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
            port in "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?",
        ) {
            let request = Request::new(&server, &client, &port).unwrap();
            let mut path = String::new();
            request.write_path(&mut path).unwrap();
            prop_assert_eq!(Request::parse(&path), Ok(request));
        }
    }
}
