//! Just enough Ethernet, ARP, IPv4 and TCP to decide what a frame is. Every
//! length is checked; a frame that is too short or inconsistent is `None`,
//! never a panic.

use std::net::Ipv4Addr;

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
const ETH_HEADER: usize = 14;
const ARP_LEN: usize = 28;
pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
pub const IPPROTO_TCP: u8 = 6;

pub type Mac = [u8; 6];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ethernet<'a> {
    pub dst: Mac,
    pub src: Mac,
    pub ethertype: u16,
    pub payload: &'a [u8],
}

pub fn ethernet(frame: &[u8]) -> Option<Ethernet<'_>> {
    let header = frame.get(..ETH_HEADER)?;
    Some(Ethernet {
        dst: header[0..6].try_into().ok()?,
        src: header[6..12].try_into().ok()?,
        ethertype: u16::from_be_bytes([header[12], header[13]]),
        payload: &frame[ETH_HEADER..],
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    pub op: u16,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_mac: Mac,
    pub target_ip: Ipv4Addr,
}

/// An Ethernet/IPv4 ARP packet.
pub fn arp(payload: &[u8]) -> Option<Arp> {
    let p = payload.get(..ARP_LEN)?;
    let htype = u16::from_be_bytes([p[0], p[1]]);
    let ptype = u16::from_be_bytes([p[2], p[3]]);
    if htype != 1 || ptype != ETHERTYPE_IPV4 || p[4] != 6 || p[5] != 4 {
        return None;
    }
    Some(Arp {
        op: u16::from_be_bytes([p[6], p[7]]),
        sender_mac: p[8..14].try_into().ok()?,
        sender_ip: Ipv4Addr::new(p[14], p[15], p[16], p[17]),
        target_mac: p[18..24].try_into().ok()?,
        target_ip: Ipv4Addr::new(p[24], p[25], p[26], p[27]),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub payload: &'a [u8],
}

pub fn ipv4(payload: &[u8]) -> Option<Ipv4<'_>> {
    let head = payload.get(..20)?;
    if head[0] >> 4 != 4 {
        return None;
    }
    let ihl = (head[0] & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([head[2], head[3]]) as usize;
    if ihl < 20 || total < ihl || total > payload.len() {
        return None;
    }
    Some(Ipv4 {
        src: Ipv4Addr::new(head[12], head[13], head[14], head[15]),
        dst: Ipv4Addr::new(head[16], head[17], head[18], head[19]),
        protocol: head[9],
        payload: &payload[ihl..total],
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcp {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// Bytes of data after the header (options excluded).
    pub data_len: usize,
}

impl Tcp {
    /// How much sequence space the segment takes: its data, plus one each
    /// for SYN and FIN.
    pub fn seq_len(&self) -> u32 {
        self.data_len as u32
            + (self.flags & TCP_SYN != 0) as u32
            + (self.flags & TCP_FIN != 0) as u32
    }
}

pub fn tcp(segment: &[u8]) -> Option<Tcp> {
    let h = segment.get(..20)?;
    let offset = (h[12] >> 4) as usize * 4;
    if offset < 20 || offset > segment.len() {
        return None;
    }
    Some(Tcp {
        src_port: u16::from_be_bytes([h[0], h[1]]),
        dst_port: u16::from_be_bytes([h[2], h[3]]),
        seq: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
        ack: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
        flags: h[13],
        data_len: segment.len() - offset,
    })
}

/// An ARP frame (request or reply) from `sender` to `target`.
pub fn build_arp(
    op: u16,
    sender: (Mac, Ipv4Addr),
    target: (Mac, Ipv4Addr),
    eth_dst: Mac,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HEADER + ARP_LEN);
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&sender.0);
    f.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sender.0);
    f.extend_from_slice(&sender.1.octets());
    f.extend_from_slice(&target.0);
    f.extend_from_slice(&target.1.octets());
    f
}

/// One side of a TCP connection, as addressed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub mac: Mac,
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// The reset a host without the connection sends for `segment` (RFC 9293,
/// 3.10.7.1): with the segment's ACK as its sequence number if the segment
/// acknowledged something, else sequence 0 acknowledging all of it. No
/// state is needed, so it works for connections of a VM that is gone.
pub fn build_tcp_reset(from: Endpoint, to: Endpoint, segment: &Tcp) -> Vec<u8> {
    let (seq, ack, flags) = if segment.flags & TCP_ACK != 0 {
        (segment.ack, 0, TCP_RST)
    } else {
        (
            0,
            segment.seq.wrapping_add(segment.seq_len()),
            TCP_RST | TCP_ACK,
        )
    };
    let mut f = Vec::with_capacity(ETH_HEADER + 40);
    f.extend_from_slice(&to.mac);
    f.extend_from_slice(&from.mac);
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    // IPv4: no options, 40 bytes in all, don't fragment, TTL 64.
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = IPPROTO_TCP;
    ip[12..16].copy_from_slice(&from.ip.octets());
    ip[16..20].copy_from_slice(&to.ip.octets());
    let sum = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&from.port.to_be_bytes());
    tcp[2..4].copy_from_slice(&to.port.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&from.ip.octets());
    pseudo[4..8].copy_from_slice(&to.ip.octets());
    pseudo[9] = IPPROTO_TCP;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let sum = checksum(&[&pseudo, &tcp]);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&tcp);
    f
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`, each
/// of even length.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for pair in part.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += word as u32;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            if let Some(eth) = ethernet(&bytes) {
                let _ = arp(eth.payload);
                if let Some(ip) = ipv4(eth.payload) {
                    prop_assert!(ip.payload.len() <= eth.payload.len());
                    let _ = tcp(ip.payload);
                }
            }
            let _ = arp(&bytes);
            let _ = ipv4(&bytes);
            let _ = tcp(&bytes);
        }

        #[test]
        fn arp_round_trips(op in 1u16..3, smac in any::<Mac>(), sip in any::<[u8; 4]>(), tmac in any::<Mac>(), tip in any::<[u8; 4]>()) {
            let f = build_arp(op, (smac, sip.into()), (tmac, tip.into()), [0xff; 6]);
            let eth = ethernet(&f).unwrap();
            prop_assert_eq!(eth.ethertype, ETHERTYPE_ARP);
            prop_assert_eq!(arp(eth.payload).unwrap(), Arp { op, sender_mac: smac, sender_ip: sip.into(), target_mac: tmac, target_ip: tip.into() });
        }
    }

    #[test]
    fn ipv4_lengths_are_checked() {
        let mut p = vec![
            0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        p.extend_from_slice(&[0; 20]);
        assert_eq!(ipv4(&p).unwrap().payload.len(), 20);
        p[3] = 60; // claims more than there is
        assert_eq!(ipv4(&p), None);
        p[3] = 40;
        p[0] = 0x44; // IHL 16 < 20
        assert_eq!(ipv4(&p), None);
        p[0] = 0x65; // IPv6 version nibble
        assert_eq!(ipv4(&p), None);
    }
}
