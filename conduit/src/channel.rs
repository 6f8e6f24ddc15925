//! One open channel as a monitor holds it: the memory, the eventfd it
//! signals its peer with and the one the peer signals it with. What the
//! guest sees of it is the memory, in a slot of its window; the signals go
//! through the guest's SIGNAL_POLL.
//!
//! A monitor speaks for its guest: when the guest is gone (stopped, parked
//! again, crashed) its monitor marks its end gone and signals the peer; and
//! when the peer's monitor is gone, this one marks the peer's end gone and
//! wakes its own guest, which then reads what is left and sees the end of
//! the stream.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use jitsu_vchan::{mark_gone, Role};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::memory::ChannelMemory;

/// Where a monitor keeps the eventfds its vCPU thread signals and drains:
/// one fixed range of descriptor numbers, so that thread's seccomp filter
/// can allow `read` and `write` there and nowhere else.
pub const SIGNAL_FDS: std::ops::Range<RawFd> = 768..1024;

/// Moves `fd` to the lowest free number in [`SIGNAL_FDS`], non-blocking.
pub fn into_signal_range(fd: OwnedFd) -> std::io::Result<OwnedFd> {
    let moved = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(SIGNAL_FDS.start))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a fresh descriptor we now own.
    let moved = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(moved) };
    if !SIGNAL_FDS.contains(&moved.as_raw_fd()) {
        return Err(std::io::Error::other(
            "no free descriptor for a channel signal",
        ));
    }
    fcntl(&moved, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    Ok(moved)
}

/// A fresh eventfd in the signal range.
pub fn signal_eventfd() -> std::io::Result<OwnedFd> {
    let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
    into_signal_range(efd.into())
}

#[derive(Debug)]
pub struct Channel {
    memory: ChannelMemory,
    role: Role,
    /// Written to signal the peer.
    signal: OwnedFd,
    /// Readable when the peer has signalled.
    wake: OwnedFd,
    /// The other end's name and the port.
    pub peer: String,
    pub port: String,
}

impl Channel {
    pub fn new(
        memory: ChannelMemory,
        role: Role,
        signal: OwnedFd,
        wake: OwnedFd,
        peer: String,
        port: String,
    ) -> Channel {
        Channel {
            memory,
            role,
            signal,
            wake,
            peer,
            port,
        }
    }

    pub fn memory(&self) -> &ChannelMemory {
        &self.memory
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Signals the peer (a full eventfd counter needs no second signal).
    pub fn signal_peer(&self) {
        let _ = nix::unistd::write(&self.signal, &1u64.to_ne_bytes());
    }

    /// Whether the peer signalled since the last call (and clears it).
    pub fn take_wake(&self) -> bool {
        let mut count = [0u8; 8];
        nix::unistd::read(self.wake.as_fd(), &mut count).is_ok_and(|n| n == 8)
    }

    /// Wakes our own guest (as a peer's signal would).
    fn wake_guest(&self) {
        let _ = nix::unistd::write(&self.wake, &1u64.to_ne_bytes());
    }

    /// Our guest is gone: its end is marked so, and the peer told.
    pub fn hang_up(&self) {
        mark_gone(&self.memory.parts().ctrl, self.role);
        self.signal_peer();
    }

    /// The peer's monitor is gone: its end is marked so, and our guest
    /// woken to see it.
    pub fn peer_gone(&self) {
        let peer = match self.role {
            Role::Server => Role::Client,
            Role::Client => Role::Server,
        };
        mark_gone(&self.memory.parts().ctrl, peer);
        self.wake_guest();
    }
}
