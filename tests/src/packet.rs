//! Hand-made frames for tests that must send what no socket API would (a
//! storm of SYNs from ports nobody listens on), and a packet socket to send
//! them out of an interface.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for chunk in chunks {
        for pair in chunk.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += word as u32;
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame carrying a TCP SYN, with correct IPv4 and TCP checksums.
pub fn tcp_syn(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    seq: u32,
) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&src_port.to_be_bytes());
    tcp.extend_from_slice(&dst_port.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0]);
    let pseudo = [
        &src.octets()[..],
        &dst.octets(),
        &[0, 6],
        &(tcp.len() as u16).to_be_bytes(),
    ]
    .concat();
    let sum = checksum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());

    let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());

    [&dst_mac[..], &src_mac, &[0x08, 0x00], &ip, &tcp].concat()
}

/// A DNS query for `name`, type A, with id `id` and recursion desired: the
/// payload of one UDP datagram.
pub fn dns_a_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// A broadcast ARP request from `src` asking who has `target`.
pub fn arp_request(src_mac: [u8; 6], src: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    [
        &[0xff; 6][..],
        &src_mac,
        &[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1],
        &src_mac,
        &src.octets(),
        &[0; 6],
        &target.octets(),
    ]
    .concat()
}

/// A packet socket bound to one interface of the caller's network namespace.
pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    pub fn bind(interface: &str) -> std::io::Result<PacketSocket> {
        let ifindex =
            nix::net::if_::if_nametoindex(interface).map_err(std::io::Error::from)? as i32;
        let protocol = (libc::ETH_P_ALL as u16).to_be() as i32;
        // SAFETY: socket() has no memory-safety preconditions; the result is
        // checked and owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(PacketSocket { fd, ifindex })
    }

    pub fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        // SAFETY: sockaddr_ll is plain data; zero is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: the buffer and address are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl PacketSocket {
    /// The next frame that came *in* on the interface (from the guest's
    /// side of a TAP; frames the host sends out are skipped), or `None`
    /// after `timeout` without one.
    pub fn recv_incoming(&self, timeout: std::time::Duration) -> Option<Vec<u8>> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            let ms = PollTimeout::try_from(left.as_millis().min(60_000) as u32).ok()?;
            if poll(&mut fds, ms).ok()? == 0 {
                return None;
            }
            let mut buf = vec![0u8; 2048];
            // SAFETY: sockaddr_ll is plain data; zero is a valid start.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut addr_len = size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: the buffer and address are valid for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut addr as *mut libc::sockaddr_ll).cast(),
                    &mut addr_len,
                )
            };
            if n < 0 {
                continue;
            }
            if addr.sll_ifindex == self.ifindex && addr.sll_pkttype != libc::PACKET_OUTGOING {
                buf.truncate(n as usize);
                return Some(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify_to_zero() {
        let f = tcp_syn(
            [2; 6],
            [4; 6],
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            1234,
            80,
            99,
        );
        assert_eq!(checksum(&[&f[14..34]]), 0, "IPv4 header");
        let pseudo = [&f[26..34], &[0, 6], &20u16.to_be_bytes()].concat();
        assert_eq!(checksum(&[&pseudo, &f[34..54]]), 0, "TCP segment");
    }
}
