//! Where monitors find each other's sockets, and how one knows who is on
//! the other end: a directory only root may write (`/run/jitsu/conduit`),
//! holding for each Conduit name
//!
//! ```text
//! <name>          the listener socket of the name's monitor (SOCK_SEQPACKET),
//!                 owned by that monitor's uid; anyone may connect
//! <name>.group    a symlink whose target is the name's group (a Kubernetes
//!                 namespace, a containerd namespace)
//! ```
//!
//! Both are made by the monitor before it jails itself, while it is still
//! root, from what the shim told it; jailed, it keeps the listener's
//! descriptor and sees the directory read-only. So a name's owner and group
//! come from the kernel (the socket's owner, a root-made link), never from
//! what a peer says: a monitor proves a claimed name by its uid, which the
//! peer reads off the connection (`SO_PEERCRED`).

use std::fs;
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use jitsu_vchan::rendezvous::valid_label;
use nix::sys::socket::{
    bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};
use thiserror::Error;

/// The node's directory, unless a monitor is told another.
pub const DEFAULT_DIR: &str = "/run/jitsu/conduit";
/// Connections a listener's backlog holds while its monitor is busy.
const BACKLOG: i32 = 128;

#[derive(Debug, Error)]
pub enum AnchorError {
    #[error("{0:?} is not a Conduit name or group (a DNS label: a-z, 0-9, '-', at most 63)")]
    Label(String),
    #[error("the Conduit name {0:?} is held by a running monitor")]
    Taken(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the Conduit socket {path}: {source}")]
    Socket { path: PathBuf, source: nix::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AnchorError + '_ {
    move |source| AnchorError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn checked(label: &str) -> Result<&str, AnchorError> {
    valid_label(label)
        .then_some(label)
        .ok_or_else(|| AnchorError::Label(label.into()))
}

/// The directory, as this process sees it (a jailed monitor sees it
/// elsewhere than the host does).
#[derive(Debug, Clone)]
pub struct Dir {
    path: PathBuf,
}

/// A name proved: its monitor's uid and its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchored {
    pub uid: u32,
    pub group: String,
}

impl Dir {
    pub fn new(path: impl Into<PathBuf>) -> Dir {
        Dir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn socket_path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn group_link(&self, name: &str) -> PathBuf {
        self.path.join(format!("{name}.group"))
    }

    /// Binds `name`'s listener socket for a monitor that will run as `uid`,
    /// in `group`. A socket left by a monitor that is gone is replaced; one
    /// whose monitor still listens is not. Needs root (the directory is
    /// root's, and the socket is given to `uid`).
    pub fn bind_listener(&self, name: &str, group: &str, uid: u32) -> Result<OwnedFd, AnchorError> {
        let (name, group) = (checked(name)?, checked(group)?);
        fs::create_dir_all(&self.path).map_err(io(&self.path))?;
        fs::set_permissions(&self.path, fs::Permissions::from_mode(0o755))
            .map_err(io(&self.path))?;
        let path = self.socket_path(name);
        let sock_err = |source| AnchorError::Socket {
            path: path.clone(),
            source,
        };
        let addr = UnixAddr::new(&path).map_err(sock_err)?;
        if path.exists() {
            if still_listening(&addr) {
                return Err(AnchorError::Taken(name.into()));
            }
            fs::remove_file(&path).map_err(io(&path))?;
        }
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(sock_err)?;
        bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).map_err(sock_err)?;
        listen(&fd, Backlog::new(BACKLOG).expect("a valid backlog")).map_err(sock_err)?;
        // Anyone may connect (write permission on a socket is what connect
        // needs); who connected is read off the connection.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).map_err(io(&path))?;
        std::os::unix::fs::chown(&path, Some(uid), None).map_err(io(&path))?;
        let link = self.group_link(name);
        match fs::remove_file(&link) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(io(&link)(e)),
            _ => {}
        }
        std::os::unix::fs::symlink(group, &link).map_err(io(&link))?;
        Ok(fd)
    }

    /// Proves `name`: its socket's owner and its group, as the directory
    /// shows them. None if either is missing or not as a monitor left it.
    pub fn anchored(&self, name: &str) -> Option<Anchored> {
        if !valid_label(name) {
            return None;
        }
        let socket = fs::symlink_metadata(self.socket_path(name)).ok()?;
        if !std::os::unix::fs::FileTypeExt::is_socket(&socket.file_type()) {
            return None;
        }
        let link = self.group_link(name);
        let meta = fs::symlink_metadata(&link).ok()?;
        if !meta.file_type().is_symlink() || meta.uid() != 0 {
            return None;
        }
        let group = fs::read_link(&link)
            .ok()?
            .into_os_string()
            .into_string()
            .ok()?;
        valid_label(&group).then_some(Anchored {
            uid: socket.uid(),
            group,
        })
    }

    /// Removes what `name`'s monitor left (the shim, once it is gone).
    pub fn remove(&self, name: &str) {
        if valid_label(name) {
            let _ = fs::remove_file(self.socket_path(name));
            let _ = fs::remove_file(self.group_link(name));
        }
    }
}

/// Whether a monitor still accepts on `addr` (a refused connect means the
/// socket is a leftover).
fn still_listening(addr: &UnixAddr) -> bool {
    let Ok(probe) = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return false;
    };
    connect(std::os::fd::AsRawFd::as_raw_fd(&probe), addr).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_bound_once_and_proved_by_its_owner_and_group() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::new(tmp.path().join("conduit"));
        let me = nix::unistd::getuid().as_raw();
        let listener = dir.bind_listener("kv", "team-a", me).unwrap();
        assert_eq!(
            dir.anchored("kv"),
            Some(Anchored {
                uid: me,
                group: "team-a".into()
            })
        );
        assert!(matches!(
            dir.bind_listener("kv", "team-a", me),
            Err(AnchorError::Taken(_))
        ));
        drop(listener);
        // Its monitor gone, the name is free again.
        let _again = dir.bind_listener("kv", "team-b", me).unwrap();
        assert_eq!(dir.anchored("kv").unwrap().group, "team-b");
        assert!(dir.anchored("web").is_none());
        assert!(dir.anchored("../kv").is_none());
        assert!(matches!(
            dir.bind_listener("Kv", "a", me),
            Err(AnchorError::Label(_))
        ));
        dir.remove("kv");
        assert!(dir.anchored("kv").is_none());
    }
}
