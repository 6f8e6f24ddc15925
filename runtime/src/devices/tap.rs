//! Opening an existing TAP interface by name.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use thiserror::Error;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;

#[derive(Debug, Error)]
pub enum TapError {
    #[error("TAP interface name {0:?} is not valid (1 to 15 bytes, no '/' or whitespace)")]
    InvalidName(String),
    #[error("TAP interface {0} does not exist (create it with `ip tuntap add {0} mode tap`)")]
    Missing(String),
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(std::io::Error),
    #[error("interface {0} is not a TAP device")]
    NotTap(String),
    #[error("TAP interface {0} is already in use by another process")]
    Busy(String),
    #[error("cannot attach to TAP interface {name}: {source}")]
    Attach {
        name: String,
        source: std::io::Error,
    },
}

pub struct Tap {
    file: File,
    name: String,
    mtu: u16,
}

impl Tap {
    pub fn open(name: &str) -> Result<Tap, TapError> {
        check_name(name)?;
        if nix::net::if_::if_nametoindex(name).is_err() {
            return Err(TapError::Missing(name.into()));
        }
        Tap::attach(name)
    }

    /// Opens `name`, creating it if it does not exist (TUNSETIFF does both).
    fn attach(name: &str) -> Result<Tap, TapError> {
        check_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = ifreq(name);
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads an ifreq that lives across the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            let err = std::io::Error::last_os_error();
            return Err(match err.raw_os_error() {
                Some(libc::EBUSY) => TapError::Busy(name.into()),
                Some(libc::EINVAL) => TapError::NotTap(name.into()),
                _ => TapError::Attach {
                    name: name.into(),
                    source: err,
                },
            });
        }
        let mtu = interface_mtu(name).unwrap_or(1500);
        Ok(Tap {
            file,
            name: name.into(),
            mtu,
        })
    }

    /// Creates a TAP interface that outlives this process (until
    /// [`Tap::destroy`]), for a monitor to open later.
    pub fn create_persistent(name: &str) -> Result<(), TapError> {
        Tap::set_persistent(name, true)
    }

    /// Removes a persistent TAP created by [`Tap::create_persistent`]: once
    /// not persistent, the device goes with the last open descriptor.
    pub fn destroy(name: &str) -> Result<(), TapError> {
        Tap::set_persistent(name, false)
    }

    fn set_persistent(name: &str, on: bool) -> Result<(), TapError> {
        let tap = Tap::attach(name)?;
        // SAFETY: TUNSETPERSIST takes an integer argument by value.
        if unsafe { libc::ioctl(tap.file.as_raw_fd(), TUNSETPERSIST, on as libc::c_ulong) } < 0 {
            return Err(TapError::Attach {
                name: name.into(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    pub fn file_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.file.as_fd()
    }

    /// `&File` implements Read and Write, so shared access is enough to move frames.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// 1 to 15 bytes, no '/', whitespace or NUL: what the kernel accepts.
fn check_name(name: &str) -> Result<(), TapError> {
    let invalid = name.is_empty()
        || name.len() >= libc::IFNAMSIZ
        || name
            .bytes()
            .any(|b| b == b'/' || b.is_ascii_whitespace() || b == 0);
    if invalid {
        return Err(TapError::InvalidName(name.into()));
    }
    Ok(())
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

/// The interface's MTU, as seen in the caller's network namespace.
fn interface_mtu(name: &str) -> Option<u16> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    let mut req = ifreq(name);
    // SAFETY: SIOCGIFMTU fills the ifreq passed in; it outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) } < 0 {
        return None;
    }
    // SAFETY: SIOCGIFMTU wrote the mtu member of the union.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    u16::try_from(mtu).ok().map(|m| m.min(jitsu_abi::MTU_MAX))
}
