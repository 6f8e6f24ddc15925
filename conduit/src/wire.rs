//! What two monitors say on a Conduit connection (one `SOCK_SEQPACKET`
//! packet each, text, one line):
//!
//! ```text
//! client → listener   connect <client> <port> <left order> <right order>
//! listener → client   accept <left order> <right order>     + 3 descriptors:
//!                     the channel's memfd, the eventfd the listener signals,
//!                     the eventfd the client signals
//!                 or  refuse <reason> <why, in words>
//! ```
//!
//! After that the connection carries nothing; it stays open for as long as
//! the channel does, and its end is how each monitor learns that the
//! other side is gone (whatever way its monitor ended).
//!
//! Packets are parsed strictly: a peer that sends anything else, more
//! than [`MAX_PACKET`] bytes, or the wrong number of descriptors, is cut off.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use jitsu_vchan::rendezvous::valid_label;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// No packet is longer (the longest, a refusal, is cut to fit).
pub const MAX_PACKET: usize = 256;

/// Why a listener refused, as the connecting guest is told it
/// (`jitsu_abi::conduit::REFUSED_*` carries the same numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    NoListener = 1,
    NotAllowed = 2,
    Busy = 3,
    Unreachable = 4,
}

impl Reason {
    fn from_code(code: u32) -> Option<Reason> {
        Some(match code {
            1 => Reason::NoListener,
            2 => Reason::NotAllowed,
            3 => Reason::Busy,
            4 => Reason::Unreachable,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect {
        client: String,
        port: String,
        left_order: u16,
        right_order: u16,
    },
    Accept {
        left_order: u16,
        right_order: u16,
    },
    Refuse {
        reason: Reason,
        why: String,
    },
}

/// The descriptors an `accept` carries, in order.
pub const ACCEPT_FDS: usize = 3;

impl Packet {
    pub fn encode(&self) -> Vec<u8> {
        let mut line = match self {
            Packet::Connect {
                client,
                port,
                left_order,
                right_order,
            } => format!("connect {client} {port} {left_order} {right_order}"),
            Packet::Accept {
                left_order,
                right_order,
            } => format!("accept {left_order} {right_order}"),
            Packet::Refuse { reason, why } => {
                let why: String = why
                    .chars()
                    .map(|c| if c.is_ascii_graphic() { c } else { ' ' })
                    .collect();
                match why.is_empty() {
                    true => format!("refuse {}", *reason as u32),
                    false => format!("refuse {} {why}", *reason as u32),
                }
            }
        };
        line.truncate(MAX_PACKET);
        line.into_bytes()
    }

    /// Parses one packet; None for anything that is not exactly one.
    pub fn parse(bytes: &[u8]) -> Option<Packet> {
        if bytes.len() > MAX_PACKET {
            return None;
        }
        let text = std::str::from_utf8(bytes).ok()?;
        let (verb, rest) = text.split_once(' ')?;
        let order = |s: &str| -> Option<u16> {
            let n: u16 = s.parse().ok()?;
            (n.to_string() == s).then_some(n)
        };
        match verb {
            "connect" => {
                let mut parts = rest.split(' ');
                let (Some(client), Some(port), Some(l), Some(r), None) = (
                    parts.next(),
                    parts.next(),
                    parts.next(),
                    parts.next(),
                    parts.next(),
                ) else {
                    return None;
                };
                (valid_label(client) && valid_label(port)).then_some(())?;
                Some(Packet::Connect {
                    client: client.into(),
                    port: port.into(),
                    left_order: order(l)?,
                    right_order: order(r)?,
                })
            }
            "accept" => {
                let (l, r) = rest.split_once(' ')?;
                Some(Packet::Accept {
                    left_order: order(l)?,
                    right_order: order(r)?,
                })
            }
            "refuse" => {
                let (code, why) = match rest.split_once(' ') {
                    None => (rest, ""),
                    Some((code, why)) if !why.is_empty() => (code, why),
                    Some(_) => return None,
                };
                let reason = Reason::from_code(order(code)?.into())?;
                why.bytes()
                    .all(|b| b.is_ascii_graphic() || b == b' ')
                    .then_some(())?;
                Some(Packet::Refuse {
                    reason,
                    why: why.into(),
                })
            }
            _ => None,
        }
    }
}

/// Sends one packet, with `fds` attached.
pub fn send(socket: BorrowedFd<'_>, packet: &Packet, fds: &[BorrowedFd<'_>]) -> nix::Result<()> {
    let bytes = packet.encode();
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
    let sent = sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(&bytes)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        None,
    )?;
    if sent != bytes.len() {
        return Err(nix::Error::EMSGSIZE);
    }
    Ok(())
}

/// What one receive got.
#[derive(Debug)]
pub enum Received {
    Packet(Packet, Vec<OwnedFd>),
    /// The peer closed the connection.
    Closed,
    /// Nothing there yet (the socket is non-blocking).
    Nothing,
    /// Not a packet of ours, cut, or with descriptors cut off: the peer is
    /// broken or hostile.
    Garbage,
}

/// Receives one packet. Descriptors that came with it are ours to close,
/// whatever it was.
pub fn receive(socket: BorrowedFd<'_>) -> Received {
    let mut buf = [0u8; MAX_PACKET + 1];
    let mut space = nix::cmsg_space!([RawFd; ACCEPT_FDS + 1]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = match recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(msg) => msg,
        Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => return Received::Nothing,
        Err(_) => return Received::Closed,
    };
    let mut fds = Vec::new();
    if let Ok(cmsgs) = msg.cmsgs() {
        for cmsg in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                // SAFETY: SCM_RIGHTS installed these descriptors in this
                // process just now; nothing else owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
    }
    let (bytes, flags) = (msg.bytes, msg.flags);
    if bytes == 0 && fds.is_empty() {
        return Received::Closed;
    }
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
        return Received::Garbage;
    }
    let Some(packet) = Packet::parse(&buf[..bytes]) else {
        return Received::Garbage;
    };
    let wanted = if matches!(packet, Packet::Accept { .. }) {
        ACCEPT_FDS
    } else {
        0
    };
    if fds.len() != wanted {
        return Received::Garbage;
    }
    Received::Packet(packet, fds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use proptest::prelude::*;
    use std::os::fd::AsFd;

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    #[test]
    fn packets_and_descriptors_cross_whole() {
        let (a, b) = pair();
        let connect = Packet::Connect {
            client: "web".into(),
            port: "counter".into(),
            left_order: 16,
            right_order: 12,
        };
        send(a.as_fd(), &connect, &[]).unwrap();
        assert!(
            matches!(receive(b.as_fd()), Received::Packet(p, fds) if p == connect && fds.is_empty())
        );
        let accept = Packet::Accept {
            left_order: 16,
            right_order: 12,
        };
        let (x, y) = pair();
        send(b.as_fd(), &accept, &[x.as_fd(), y.as_fd(), x.as_fd()]).unwrap();
        match receive(a.as_fd()) {
            Received::Packet(p, fds) => {
                assert_eq!(p, accept);
                assert_eq!(fds.len(), 3);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(receive(a.as_fd()), Received::Nothing));
        // An accept without its descriptors, or a connect with some, is garbage.
        send(b.as_fd(), &accept, &[]).unwrap();
        assert!(matches!(receive(a.as_fd()), Received::Garbage));
        send(b.as_fd(), &connect, &[x.as_fd()]).unwrap();
        assert!(matches!(receive(a.as_fd()), Received::Garbage));
        drop(b);
        assert!(matches!(receive(a.as_fd()), Received::Closed));
    }

    #[test]
    fn refusals_say_why_in_one_clean_line() {
        let refuse = Packet::Refuse {
            reason: Reason::NotAllowed,
            why: "web (team-b) is not in team-a\nand not allowed".into(),
        };
        let parsed = Packet::parse(&refuse.encode()).unwrap();
        assert_eq!(
            parsed,
            Packet::Refuse {
                reason: Reason::NotAllowed,
                why: "web (team-b) is not in team-a and not allowed".into()
            }
        );
        let long = Packet::Refuse {
            reason: Reason::Busy,
            why: "x".repeat(1000),
        };
        assert_eq!(long.encode().len(), MAX_PACKET);
        assert!(Packet::parse(&long.encode()).is_some());
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            &b""[..],
            b"connect",
            b"connect web counter 16",
            b"connect web counter 16 16 extra",
            b"connect Web counter 16 16",
            b"connect web ../x 16 16",
            b"connect web counter 016 16",
            b"connect web counter -1 16",
            b"accept 16",
            b"accept 16 99999",
            b"refuse 9 no such reason",
            b"refuse 01 leading zero",
            b"refuse 1 ",
            b"refuse 1 tab\there",
            b"hello there",
        ] {
            assert_eq!(
                Packet::parse(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest! {
        /// Any bytes parse or are refused, never a panic; what parses
        /// encodes back to the same bytes.
        #[test]
        fn any_packet_parses_strictly(bytes in proptest::collection::vec(any::<u8>(), 0..300),
                                      text in "(connect|accept|refuse) [a-z0-9 -]{0,40}") {
            for input in [&bytes[..], text.as_bytes()] {
                if let Some(packet) = Packet::parse(input) {
                    prop_assert_eq!(packet.encode(), input.to_vec());
                }
            }
        }
    }
}
