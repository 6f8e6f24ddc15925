//! TAP interfaces: opened by name, created to outlive the process (for the
//! shim), filtered to the frames of one guest, and the frame port through
//! which Synjitsu sees a parked service.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use thiserror::Error;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
/// `_IOW('T', 213, struct sock_fprog)`.
const TUNATTACHFILTER: libc::c_ulong = 0x4010_54d5;
/// Destination, source, EtherType.
const ETHERNET_HEADER: usize = 14;

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
    #[error("cannot filter the frames of TAP interface {name}: {source}")]
    Filter {
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

    /// Creates `name`, which must not exist, for this process alone: it
    /// goes when the last descriptor closes, however the process ends.
    pub fn create_private(name: &str) -> Result<Tap, TapError> {
        check_name(name)?;
        if nix::net::if_::if_nametoindex(name).is_ok() {
            return Err(TapError::Busy(name.into()));
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

    /// Lets through to this end of the TAP only frames for the guest: ARP
    /// requests for `ipv4`, IPv4 packets to it, and anything sent to `mac`.
    /// Everything else on the link (ARP for the neighbours, IPv6 chatter)
    /// is dropped in the kernel, so that a broadcast on a bridge of a
    /// hundred parked services does not wake a hundred monitors.
    pub fn admit_only(&self, mac: [u8; 6], ipv4: std::net::Ipv4Addr) -> Result<(), TapError> {
        let program = guest_frames_filter(mac, ipv4);
        let fprog = libc::sock_fprog {
            len: program.len() as u16,
            filter: program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: TUNATTACHFILTER copies the program the sock_fprog points
        // to (which outlives the call) into the kernel.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), TUNATTACHFILTER, &fprog) } < 0 {
            return Err(TapError::Filter {
                name: self.name.clone(),
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

/// A classic BPF program over an Ethernet frame: accept ARP whose target
/// is `ipv4`, IPv4 whose destination is `ipv4`, or any frame to `mac`.
/// (A load past the end of a short frame ends the program: dropped.)
fn guest_frames_filter(mac: [u8; 6], ipv4: std::net::Ipv4Addr) -> Vec<libc::sock_filter> {
    const ARP_TARGET_IP: u32 = 14 + 24;
    const IPV4_DESTINATION: u32 = 14 + 16;
    let ip = u32::from(ipv4);
    let mac_high = u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]]);
    let mac_low = u16::from_be_bytes([mac[4], mac[5]]) as u32;
    let load_word = |offset| stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset);
    let load_half = |offset| stmt(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, offset);
    // Jump targets are counted from the next instruction.
    vec![
        /* 0 */ load_half(12),
        /* 1 */ jump_eq(0x0806, 0, 2),
        /* 2 */ load_word(ARP_TARGET_IP),
        /* 3 */ jump_eq(ip, 7, 3),
        /* 4 */ jump_eq(0x0800, 0, 2),
        /* 5 */ load_word(IPV4_DESTINATION),
        /* 6 */ jump_eq(ip, 4, 0),
        /* 7 */ load_word(0),
        /* 8 */ jump_eq(mac_high, 0, 3),
        /* 9 */ load_half(4),
        /* 10 */ jump_eq(mac_low, 0, 1),
        /* 11 */ stmt(libc::BPF_RET | libc::BPF_K, u32::MAX),
        /* 12 */ stmt(libc::BPF_RET | libc::BPF_K, 0),
    ]
}

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump_eq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

impl crate::backend::FramePort for Tap {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file_fd()
    }

    fn max_frame(&self) -> usize {
        self.mtu as usize + ETHERNET_HEADER
    }

    fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::Read;
        self.file().read(buf)
    }

    fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.file().write(frame).map(drop)
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
    u16::try_from(mtu).ok()
}
