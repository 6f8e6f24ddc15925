//! What a guest may send: frames with its own MAC as the Ethernet source,
//! carrying IPv4 from its own address or ARP that speaks for its own MAC
//! and address. Everything else (another source MAC or IP, ARP claiming
//! someone else's address, IPv6, VLAN tags, malformed headers) is refused
//! before it reaches the link, so a guest cannot pose as a neighbour, poison
//! ARP caches or slip past the node's filters. Every backend applies it to
//! every frame a guest sends.

use std::net::Ipv4Addr;

use synjitsu::frame::{self, ETHERTYPE_ARP, ETHERTYPE_IPV4};

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The Ethernet source is not the guest's MAC.
    SourceMac,
    /// The IPv4 source is not the guest's address.
    SourceIp,
    /// ARP whose sender is not the guest (its MAC or its address).
    ArpSender,
    /// Neither IPv4 nor ARP (the guest has no other protocol).
    Ethertype(u16),
    /// Too short, or headers that do not add up.
    Malformed,
}

/// The guest's own addresses, against which its frames are checked.
#[derive(Debug, Clone, Copy)]
pub struct EgressFilter {
    pub mac: [u8; 6],
    pub ipv4: Ipv4Addr,
}

impl EgressFilter {
    pub fn check(&self, bytes: &[u8]) -> Result<(), Refused> {
        let eth = frame::ethernet(bytes).ok_or(Refused::Malformed)?;
        if eth.src != self.mac {
            return Err(Refused::SourceMac);
        }
        match eth.ethertype {
            ETHERTYPE_IPV4 => {
                let ip = frame::ipv4(eth.payload).ok_or(Refused::Malformed)?;
                if ip.src != self.ipv4 {
                    return Err(Refused::SourceIp);
                }
            }
            ETHERTYPE_ARP => {
                let arp = frame::arp(eth.payload).ok_or(Refused::Malformed)?;
                if arp.sender_mac != self.mac || arp.sender_ip != self.ipv4 {
                    return Err(Refused::ArpSender);
                }
            }
            other => return Err(Refused::Ethertype(other)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAC: [u8; 6] = [0x02, 0x4a, 10, 77, 0, 2];
    const IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
    const FILTER: EgressFilter = EgressFilter { mac: MAC, ipv4: IP };

    fn ipv4_frame(src_mac: [u8; 6], src: Ipv4Addr) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend(src_mac);
        f.extend(ETHERTYPE_IPV4.to_be_bytes());
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&20u16.to_be_bytes());
        ip[9] = 17;
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&[10, 77, 0, 1]);
        f.extend(ip);
        f
    }

    fn arp_frame(src_mac: [u8; 6], sender_mac: [u8; 6], sender: Ipv4Addr) -> Vec<u8> {
        let gateway = ([0; 6], Ipv4Addr::new(10, 77, 0, 1));
        let mut f = frame::build_arp(frame::ARP_REQUEST, (sender_mac, sender), gateway, [0xff; 6]);
        f[6..12].copy_from_slice(&src_mac);
        f
    }

    #[test]
    fn the_guests_own_frames_pass() {
        assert_eq!(FILTER.check(&ipv4_frame(MAC, IP)), Ok(()));
        assert_eq!(FILTER.check(&arp_frame(MAC, MAC, IP)), Ok(()));
    }

    #[test]
    fn frames_posing_as_another_are_refused() {
        let other_mac = [0x02, 0, 0, 0, 0, 9];
        let other_ip = Ipv4Addr::new(10, 77, 0, 9);
        let cases = [
            (ipv4_frame(other_mac, IP), Refused::SourceMac),
            (ipv4_frame(MAC, other_ip), Refused::SourceIp),
            (ipv4_frame(MAC, Ipv4Addr::UNSPECIFIED), Refused::SourceIp),
            (arp_frame(MAC, MAC, other_ip), Refused::ArpSender),
            (arp_frame(MAC, other_mac, IP), Refused::ArpSender),
            (arp_frame(other_mac, MAC, IP), Refused::SourceMac),
        ];
        for (frame, why) in cases {
            assert_eq!(FILTER.check(&frame), Err(why));
        }
    }

    #[test]
    fn other_protocols_and_broken_headers_are_refused() {
        let mut ipv6 = ipv4_frame(MAC, IP);
        ipv6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        assert_eq!(FILTER.check(&ipv6), Err(Refused::Ethertype(0x86dd)));
        let mut vlan = ipv4_frame(MAC, IP);
        vlan[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        assert_eq!(FILTER.check(&vlan), Err(Refused::Ethertype(0x8100)));
        let short = ipv4_frame(MAC, IP);
        assert_eq!(FILTER.check(&short[..20]), Err(Refused::Malformed));
        assert_eq!(FILTER.check(&short[..10]), Err(Refused::Malformed));
    }

    proptest! {
        /// Whatever the bytes, a frame passes only with the guest's MAC as
        /// source and, if it parses as IPv4, the guest's address.
        #[test]
        fn nothing_passes_with_another_source(mut bytes in proptest::collection::vec(any::<u8>(), 0..128), own_mac in any::<bool>()) {
            if own_mac && bytes.len() >= 12 {
                bytes[6..12].copy_from_slice(&MAC);
            }
            if FILTER.check(&bytes).is_ok() {
                let eth = frame::ethernet(&bytes).unwrap();
                prop_assert_eq!(eth.src, MAC);
                match eth.ethertype {
                    ETHERTYPE_IPV4 => prop_assert_eq!(frame::ipv4(eth.payload).unwrap().src, IP),
                    ETHERTYPE_ARP => prop_assert_eq!(frame::arp(eth.payload).unwrap().sender_ip, IP),
                    other => prop_assert!(false, "ethertype {other:#x} passed"),
                }
            }
        }
    }
}
