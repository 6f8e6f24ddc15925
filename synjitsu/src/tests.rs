use super::*;
use proptest::prelude::*;

const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const MAC: Mac = [2, 0x4a, 10, 77, 0, 2];
const CLIENT_MAC: Mac = [2, 0, 0, 0, 0, 1];

fn syn(src_port: u16, seq: u32, dst: Ipv4Addr) -> Vec<u8> {
    segment(src_port, seq, 0, TCP_SYN, &[], dst)
}

/// A TCP segment from the client (10.77.0.1) to `dst`:80.
fn segment(src_port: u16, seq: u32, ack: u32, flags: u8, data: &[u8], dst: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let total = (40 + data.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, IPPROTO_TCP, 0, 0, 10, 77, 0, 1]);
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&src_port.to_be_bytes());
    f.extend_from_slice(&80u16.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&ack.to_be_bytes());
    f.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend_from_slice(data);
    f
}

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    frame::build_arp(
        ARP_REQUEST,
        (CLIENT_MAC, Ipv4Addr::new(10, 77, 0, 1)),
        ([0; 6], target),
        [0xff; 6],
    )
}

#[test]
fn answers_arp_for_the_service_only() {
    let mut s = Synjitsu::new(Config::new(SERVICE, MAC));
    let v = s.on_frame(&arp_request(SERVICE));
    let Action::Reply(reply) = v.action else {
        panic!("{v:?}")
    };
    assert!(!v.boot, "ARP alone does not boot");
    let eth = frame::ethernet(&reply).unwrap();
    let arp = frame::arp(eth.payload).unwrap();
    assert_eq!(
        (eth.dst, arp.op, arp.sender_mac, arp.sender_ip),
        (CLIENT_MAC, ARP_REPLY, MAC, SERVICE)
    );
    assert_eq!(arp.target_ip, Ipv4Addr::new(10, 77, 0, 1));
    assert_eq!(
        s.on_frame(&arp_request(Ipv4Addr::new(10, 77, 0, 9))).action,
        Action::Dropped(Drop::NotForService)
    );
    let gratuitous = frame::build_arp(ARP_REQUEST, (MAC, SERVICE), ([0; 6], SERVICE), [0xff; 6]);
    assert_eq!(
        s.on_frame(&gratuitous).action,
        Action::Dropped(Drop::NotForService),
        "the guest's own gratuitous ARP is not answered"
    );
    assert_eq!(s.stats().arp_replies, 1);
}

#[test]
fn first_packet_boots_and_everything_for_the_service_is_held_in_order() {
    let mut s = Synjitsu::new(Config::new(SERVICE, MAC));
    let a = s.on_frame(&syn(1000, 1, SERVICE));
    assert_eq!(
        a,
        Verdict {
            action: Action::Held,
            boot: true
        }
    );
    let b = s.on_frame(&syn(1001, 2, SERVICE));
    assert_eq!(
        b,
        Verdict {
            action: Action::Held,
            boot: false
        }
    );
    assert_eq!(
        s.on_frame(&syn(1002, 3, Ipv4Addr::new(10, 77, 0, 3)))
            .action,
        Action::Dropped(Drop::NotForService)
    );
    let held = s.take_held();
    assert_eq!(held.len(), 3, "priming ARP + two SYNs");
    let prime = frame::arp(frame::ethernet(&held[0]).unwrap().payload).unwrap();
    assert_eq!(
        (prime.op, prime.sender_mac, prime.target_ip),
        (ARP_REQUEST, CLIENT_MAC, SERVICE)
    );
    assert_eq!(held[1], syn(1000, 1, SERVICE));
    assert_eq!(held[2], syn(1001, 2, SERVICE));
    // Parked again: the next packet boots again.
    assert!(s.on_frame(&syn(1003, 4, SERVICE)).boot);
    assert_eq!(s.stats().triggers, 2);
}

#[test]
fn retransmitted_syns_are_not_held_twice() {
    let mut s = Synjitsu::new(Config::new(SERVICE, MAC));
    s.on_frame(&syn(1000, 77, SERVICE));
    assert_eq!(
        s.on_frame(&syn(1000, 77, SERVICE)).action,
        Action::Dropped(Drop::DuplicateSyn)
    );
    assert_eq!(
        s.on_frame(&syn(1000, 78, SERVICE)).action,
        Action::Held,
        "a new ISN is a new connection"
    );
    assert_eq!(s.held_now(), 2);
    assert_eq!(s.stats().dropped_duplicate_syn, 1);
}

#[test]
fn the_queue_drops_the_oldest_beyond_its_bounds() {
    let mut config = Config::new(SERVICE, MAC);
    config.max_frames = 4;
    let mut s = Synjitsu::new(config);
    for port in 0..10 {
        s.on_frame(&syn(port, port as u32, SERVICE));
    }
    assert_eq!(s.held_now(), 4);
    assert_eq!(s.stats().dropped_overflow, 6);
    let held = s.take_held();
    assert_eq!(
        &held[1..],
        &[
            syn(6, 6, SERVICE),
            syn(7, 7, SERVICE),
            syn(8, 8, SERVICE),
            syn(9, 9, SERVICE)
        ]
    );
    // Byte bound too.
    let mut config = Config::new(SERVICE, MAC);
    config.max_bytes = 3 * 54;
    let mut s = Synjitsu::new(config);
    for port in 0..5 {
        s.on_frame(&syn(port, 0, SERVICE));
    }
    assert_eq!(s.held_now(), 3);
}

/// The reset Synjitsu answers `frame` with: its IPv4 and TCP checksums
/// hold, it goes back to the client, and its header fields are returned.
fn reset_for(s: &mut Synjitsu, frame: &[u8]) -> frame::Tcp {
    let v = s.on_frame(frame);
    assert!(!v.boot, "an old connection's segment does not boot");
    let Action::Reply(reply) = v.action else {
        panic!("not answered: {v:?}")
    };
    let eth = frame::ethernet(&reply).unwrap();
    assert_eq!((eth.dst, eth.src), (CLIENT_MAC, MAC));
    let ip = frame::ipv4(eth.payload).unwrap();
    assert_eq!((ip.src, ip.dst), (SERVICE, Ipv4Addr::new(10, 77, 0, 1)));
    assert_eq!(frame::checksum(&[&eth.payload[..20]]), 0, "IPv4 checksum");
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&SERVICE.octets());
    pseudo.extend_from_slice(&[10, 77, 0, 1, 0, IPPROTO_TCP, 0, 20]);
    assert_eq!(frame::checksum(&[&pseudo, ip.payload]), 0, "TCP checksum");
    let tcp = frame::tcp(ip.payload).unwrap();
    assert_eq!((tcp.src_port, tcp.data_len), (80, 0));
    tcp
}

#[test]
fn segments_of_old_connections_are_reset_without_booting() {
    let mut s = Synjitsu::new(Config::new(SERVICE, MAC));
    // A keep-alive client's next request: the reset takes its ACK as sequence.
    let request = segment(
        1000,
        5,
        9000,
        TCP_ACK | 0x08,
        b"GET / HTTP/1.1\r\n\r\n",
        SERVICE,
    );
    let rst = reset_for(&mut s, &request);
    assert_eq!((rst.dst_port, rst.flags, rst.seq), (1000, TCP_RST, 9000));
    // Without an ACK: sequence 0, acknowledging the data and the FIN.
    let fin = segment(1001, 100, 0, frame::TCP_FIN, b"abc", SERVICE);
    let rst = reset_for(&mut s, &fin);
    assert_eq!((rst.flags, rst.seq, rst.ack), (TCP_RST | TCP_ACK, 0, 104));
    // A SYN-ACK answers a connection the old VM opened.
    let syn_ack = segment(1002, u32::MAX, 77, TCP_SYN | TCP_ACK, &[], SERVICE);
    assert_eq!(reset_for(&mut s, &syn_ack).seq, 77);
    // A reset is never answered.
    let rst_in = segment(1003, 5, 0, TCP_RST, &[], SERVICE);
    assert_eq!(
        s.on_frame(&rst_in),
        Verdict {
            action: Action::Dropped(Drop::Stale),
            boot: false
        }
    );
    assert_eq!((s.stats().resets, s.stats().dropped_stale), (3, 1));
    assert_eq!(s.held_now(), 0);
    assert!(
        s.on_frame(&syn(1000, 6, SERVICE)).boot,
        "the client's new connection boots"
    );
}

#[test]
fn with_holding_off_the_trigger_still_boots() {
    let mut config = Config::new(SERVICE, MAC);
    config.hold = false;
    let mut s = Synjitsu::new(config);
    let v = s.on_frame(&syn(1, 1, SERVICE));
    assert_eq!(
        v,
        Verdict {
            action: Action::Dropped(Drop::NotHeld),
            boot: true
        }
    );
    assert_eq!(s.take_held().len(), 0);
}

proptest! {
    #[test]
    fn arbitrary_frames_never_panic_and_the_bounds_hold(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..300)) {
        let mut config = Config::new(SERVICE, MAC);
        config.max_frames = 16;
        config.max_bytes = 2048;
        let mut s = Synjitsu::new(config);
        for f in &frames {
            let _ = s.on_frame(f);
            prop_assert!(s.held_now() <= 16);
        }
        let st = s.stats();
        prop_assert_eq!(st.held - st.dropped_overflow, s.held_now() as u64);
        let total = st.held + st.arp_replies + st.resets + st.dropped_duplicate_syn + st.dropped_not_for_service + st.dropped_malformed + st.dropped_not_held + st.dropped_stale;
        prop_assert_eq!(total, frames.len() as u64, "every frame is accounted for once");
    }
}

proptest! {
    #[test]
    fn every_non_syn_segment_gets_a_reset_that_follows_the_rfc(
        seq in any::<u32>(), ack in any::<u32>(), flags in any::<u8>(),
        data in proptest::collection::vec(any::<u8>(), 0..64), port in 1u16..,
    ) {
        let mut s = Synjitsu::new(Config::new(SERVICE, MAC));
        let f = segment(port, seq, ack, flags, &data, SERVICE);
        let v = s.on_frame(&f);
        if flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN {
            prop_assert_eq!(v.action, Action::Held);
        } else if flags & TCP_RST != 0 {
            prop_assert_eq!(v.action, Action::Dropped(Drop::Stale));
        } else {
            let mut s = Synjitsu::new(Config::new(SERVICE, MAC));
            let rst = reset_for(&mut s, &f);
            prop_assert_eq!(rst.dst_port, port);
            prop_assert!(rst.flags & TCP_RST != 0);
            if flags & TCP_ACK != 0 {
                prop_assert_eq!((rst.seq, rst.flags), (ack, TCP_RST));
            } else {
                let len = data.len() as u32 + (flags & TCP_SYN != 0) as u32 + (flags & frame::TCP_FIN != 0) as u32;
                prop_assert_eq!((rst.seq, rst.ack), (0, seq.wrapping_add(len)));
            }
        }
    }
}
