//! The unikernel's files in its image: hostile input. An image may hold
//! symlinks that point at the host, device nodes, FIFOs, files of any size;
//! the shim runs as root on the host, so every name in the image is
//! resolved *inside* the rootfs (`openat2` with `RESOLVE_IN_ROOT`, which
//! treats the rootfs as `/` for every symlink and `..`), only regular files
//! of bounded size are opened for reading, and the monitor is handed the
//! kernel as an open descriptor, never as a path it would resolve again.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use jitsu_spec::{Hypervisor, Metadata, SpecError, UnikernelSpec, METADATA_FILE};
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, Mode, SFlag};
use thiserror::Error;

/// `jitsu.json` is a few hundred bytes; this is generous.
pub const MAX_METADATA_BYTES: u64 = 64 << 10;
/// A unikernel ELF is a few MiB at most; one this large is a mistake or an
/// attack, and the monitor maps all of it.
pub const MAX_KERNEL_BYTES: u64 = 64 << 20;

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("{path}: not in the image ({source}); names are resolved inside the image, symlinks included")]
    Missing { path: PathBuf, source: nix::Error },
    #[error(
        "{path}: a symlink or bind mount leaving the image's filesystem is not followed ({source})"
    )]
    Escapes { path: PathBuf, source: nix::Error },
    #[error("{path}: cannot open it in the image: {source}")]
    Open { path: PathBuf, source: nix::Error },
    #[error("{path}: is {kind}, not a regular file")]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{path}: is {size} bytes, more than the {limit} bytes allowed for it")]
    TooBig {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("{path}: reading it: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source} (is this a Jitsu image? build it with `jitsu pack`)")]
    Metadata { path: PathBuf, source: SpecError },
    #[error("{0}")]
    Hypervisor(String),
    #[error("{0}")]
    Spec(#[from] SpecError),
}

/// What the shim takes from an image: the checked spec and the kernel, open.
pub struct Unikernel {
    pub spec: UnikernelSpec,
    /// Which hypervisor runs it (see [`crate::monitor::choose`]).
    pub hypervisor: Hypervisor,
    /// The kernel ELF for that hypervisor, opened read-only (close-on-exec: handed to the
    /// monitor explicitly).
    pub kernel: OwnedFd,
}

/// Reads `jitsu.json` from `rootfs`, applies `annotations`, and opens the
/// kernel it names.
pub fn open(
    rootfs: &Path,
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<Unikernel, ImageError> {
    let root = nix::fcntl::open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|source| ImageError::Open {
        path: rootfs.into(),
        source,
    })?;
    let metadata_path = Path::new(METADATA_FILE);
    let json = read_bounded(
        open_regular(&root, metadata_path, MAX_METADATA_BYTES)?,
        metadata_path,
    )?;
    let mut metadata = Metadata::parse(&json).map_err(|source| ImageError::Metadata {
        path: metadata_path.into(),
        source,
    })?;
    metadata.apply_annotations(annotations)?;
    let spec = metadata.validate()?;
    let hypervisor = crate::monitor::choose(spec.hypervisor).map_err(ImageError::Hypervisor)?;
    let path = spec.kernel_for(hypervisor).ok_or_else(|| {
        ImageError::Hypervisor(format!(
            "the image has no build for {} (jitsu pack --{}kernel)",
            hypervisor.name(),
            if hypervisor == Hypervisor::Xen {
                "xen-"
            } else {
                ""
            }
        ))
    })?;
    let kernel = open_regular(&root, path, MAX_KERNEL_BYTES)?;
    Ok(Unikernel {
        spec,
        hypervisor,
        kernel,
    })
}

/// Opens `path` under `root` for reading if it is a regular file of at
/// most `limit` bytes. The name is first opened as `O_PATH`, which opens
/// nothing behind it: a FIFO does not block, a device's driver is never
/// called. Only once the inode is known to be a regular file is it
/// reopened for reading, through the descriptor itself, so that no rename
/// in between can swap it for something else.
fn open_regular(root: &OwnedFd, path: &Path, limit: u64) -> Result<OwnedFd, ImageError> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_IN_ROOT
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    let found =
        retry_on_race(|| openat2(root.as_fd(), path, how)).map_err(|source| match source {
            nix::Error::ENOENT | nix::Error::ENOTDIR | nix::Error::ELOOP => ImageError::Missing {
                path: path.into(),
                source,
            },
            nix::Error::EXDEV => ImageError::Escapes {
                path: path.into(),
                source,
            },
            source => ImageError::Open {
                path: path.into(),
                source,
            },
        })?;
    let stat = fstat(&found).map_err(|source| ImageError::Open {
        path: path.into(),
        source,
    })?;
    let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
    if kind != SFlag::S_IFREG {
        return Err(ImageError::NotRegular {
            path: path.into(),
            kind: kind_name(kind),
        });
    }
    let size = stat.st_size as u64;
    if size > limit {
        return Err(ImageError::TooBig {
            path: path.into(),
            size,
            limit,
        });
    }
    // The O_PATH descriptor's own magic link names exactly its inode.
    let reopen = format!("/proc/self/fd/{}", found.as_raw_fd());
    nix::fcntl::open(
        reopen.as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .map_err(|source| ImageError::Open {
        path: path.into(),
        source,
    })
}

/// `openat2` fails with EAGAIN when a rename raced with a `RESOLVE_IN_ROOT`
/// walk (it cannot then vouch for the result); the kernel asks to retry.
fn retry_on_race<T>(mut open: impl FnMut() -> nix::Result<T>) -> nix::Result<T> {
    let mut tries = 0;
    loop {
        match open() {
            Err(nix::Error::EAGAIN) if tries < 16 => tries += 1,
            result => return result,
        }
    }
}

fn kind_name(kind: SFlag) -> &'static str {
    match kind {
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFLNK => "a symlink",
        _ => "an unknown kind of file",
    }
}

/// Reads all of `fd`, which was checked to be at most the limit; reads one
/// byte more than that anyway, in case the file grew since.
fn read_bounded(fd: OwnedFd, path: &Path) -> Result<Vec<u8>, ImageError> {
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_METADATA_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ImageError::Read {
            path: path.into(),
            source,
        })?;
    if bytes.len() as u64 > MAX_METADATA_BYTES {
        return Err(ImageError::TooBig {
            path: path.into(),
            size: bytes.len() as u64,
            limit: MAX_METADATA_BYTES,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::symlink;

    fn image(kernel: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(METADATA_FILE),
            format!(r#"{{"kernel": "{kernel}"}}"#),
        )
        .unwrap();
        dir
    }

    fn refused(rootfs: &Path) -> ImageError {
        match open(rootfs, &BTreeMap::new()) {
            Ok(_) => panic!("{} was accepted", rootfs.display()),
            Err(e) => e,
        }
    }

    #[test]
    fn a_good_image_gives_its_kernel_open() {
        let dir = image("boot/unikernel.elf");
        std::fs::create_dir(dir.path().join("boot")).unwrap();
        std::fs::write(dir.path().join("boot/unikernel.elf"), b"\x7fELF").unwrap();
        let unikernel = open(dir.path(), &BTreeMap::new()).unwrap();
        let mut bytes = Vec::new();
        std::fs::File::from(unikernel.kernel)
            .read_to_end(&mut bytes)
            .unwrap();
        assert_eq!(bytes, b"\x7fELF");
    }

    #[test]
    fn a_symlink_to_a_host_file_is_resolved_inside_the_image() {
        let host = tempfile::NamedTempFile::new().unwrap();
        let dir = image("unikernel.elf");
        symlink(host.path(), dir.path().join("unikernel.elf")).unwrap();
        let e = refused(dir.path());
        assert!(matches!(e, ImageError::Missing { .. }), "{e}");
        // A relative one that climbs out stops at the image's root.
        std::fs::remove_file(dir.path().join("unikernel.elf")).unwrap();
        let climb = format!("../../../../../..{}", host.path().display());
        symlink(climb, dir.path().join("unikernel.elf")).unwrap();
        let e = refused(dir.path());
        assert!(matches!(e, ImageError::Missing { .. }), "{e}");
    }

    #[test]
    fn a_symlink_inside_the_image_is_followed() {
        let dir = image("unikernel.elf");
        std::fs::write(dir.path().join("real.elf"), b"elf").unwrap();
        symlink("/real.elf", dir.path().join("unikernel.elf")).unwrap();
        assert!(open(dir.path(), &BTreeMap::new()).is_ok());
    }

    #[test]
    fn metadata_that_is_a_device_or_a_fifo_is_refused_without_opening_it() {
        let dir = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&dir.path().join(METADATA_FILE), Mode::S_IRWXU).unwrap();
        // Opening a FIFO for reading would wait for a writer forever.
        let e = refused(dir.path());
        assert!(
            matches!(e, ImageError::NotRegular { kind: "a FIFO", .. }),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        symlink("/dev/zero", dir.path().join(METADATA_FILE)).unwrap();
        std::fs::create_dir(dir.path().join("dev")).unwrap();
        symlink("/dev/null", dir.path().join("dev/zero")).unwrap();
        let e = refused(dir.path());
        assert!(matches!(e, ImageError::Missing { .. }), "{e}");
    }

    #[test]
    fn files_over_their_bound_are_refused_unread() {
        let dir = image("unikernel.elf");
        let kernel = std::fs::File::create(dir.path().join("unikernel.elf")).unwrap();
        kernel.set_len(1 << 30).unwrap();
        let e = refused(dir.path());
        assert!(
            matches!(e, ImageError::TooBig { size, .. } if size == 1 << 30),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let json = std::fs::File::create(dir.path().join(METADATA_FILE)).unwrap();
        json.set_len(MAX_METADATA_BYTES + 1).unwrap();
        let e = refused(dir.path());
        assert!(matches!(e, ImageError::TooBig { .. }), "{e}");
    }

    #[test]
    fn a_directory_is_not_a_kernel() {
        let dir = image("boot");
        std::fs::create_dir(dir.path().join("boot")).unwrap();
        let e = refused(dir.path());
        assert!(
            matches!(
                e,
                ImageError::NotRegular {
                    kind: "a directory",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_kernel_path_with_dotdot_is_refused() {
        let dir = image("../unikernel.elf");
        let e = refused(dir.path());
        assert!(
            matches!(e, ImageError::Spec(SpecError::KernelPath(_))),
            "{e}"
        );
    }
}
