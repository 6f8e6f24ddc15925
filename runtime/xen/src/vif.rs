//! A domain's vif as dom0 sees it: the netdev netback made (`vif<domid>.0`),
//! a packet socket that sends frames straight to the guest through it
//! (past the bridge, so that the frames Synjitsu held arrive before any
//! other), and its count of frames the guest sent, which says when it was
//! last busy. (Frames to the guest say little: the bridge floods every
//! broadcast and multicast to every port, and dom0's own IPv6 chatter alone
//! would keep an idle guest "busy".)

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum VifError {
    #[error("vif {name}: {what}: {source}")]
    Io {
        name: String,
        what: &'static str,
        source: std::io::Error,
    },
}

pub struct Vif {
    name: String,
    index: u32,
    /// Sends only: bound to no protocol, it receives nothing.
    socket: OwnedFd,
    /// Frames from the guest (dom0 receives them on the vif).
    rx_packets: File,
}

impl Vif {
    /// The vif of domain `domid`'s first NIC, which libxl has made.
    pub fn of_domain(domid: u32) -> Result<Vif, VifError> {
        let name = format!("vif{domid}.0");
        let io = |what, source| VifError::Io {
            name: name.clone(),
            what,
            source,
        };
        let index =
            nix::net::if_::if_nametoindex(name.as_str()).map_err(|e| io("finding it", e.into()))?;
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io(
                "opening a packet socket",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: `fd` was just made and is owned by nothing else.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let counter = |which: &str| {
            File::open(format!("/sys/class/net/{name}/statistics/{which}"))
                .map_err(|e| io("opening its counter", e))
        };
        Ok(Vif {
            rx_packets: counter("rx_packets")?,
            name: name.clone(),
            index,
            socket,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// Sends `frame` (an Ethernet frame, as the wire has it) to the guest.
    pub fn send(&self, frame: &[u8]) -> Result<(), VifError> {
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid start.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = self.index as i32;
        to.sll_halen = 6;
        if let Some(dst) = frame.get(..6) {
            to.sll_addr[..6].copy_from_slice(dst);
        }
        // SAFETY: `frame` and `to` are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(VifError::Io {
                name: self.name.clone(),
                what: "sending a frame to the guest",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Frames the guest has sent so far (a vif that vanished reads as 0).
    pub fn sent_by_guest(&self) -> u64 {
        read_counter(&self.rx_packets)
    }
}

/// A sysfs counter, read from its start again (sysfs renders it afresh).
fn read_counter(file: &File) -> u64 {
    let mut text = [0u8; 24];
    let n = file.read_at(&mut text, 0).unwrap_or(0);
    std::str::from_utf8(&text[..n])
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}
