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
pub const TCP_SYN: u8 = 0x02;
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
    pub flags: u8,
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
        flags: h[13],
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
