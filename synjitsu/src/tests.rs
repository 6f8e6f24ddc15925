use super::*;
use proptest::prelude::*;

const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const MAC: Mac = [2, 0x4a, 10, 77, 0, 2];
const CLIENT_MAC: Mac = [2, 0, 0, 0, 0, 1];

fn syn(src_port: u16, seq: u32, dst: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&MAC);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    f.extend_from_slice(&[
        0x45,
        0,
        0,
        40,
        0,
        0,
        0x40,
        0,
        64,
        IPPROTO_TCP,
        0,
        0,
        10,
        77,
        0,
        1,
    ]);
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&src_port.to_be_bytes());
    f.extend_from_slice(&80u16.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0, 0x50, TCP_SYN, 0xff, 0xff, 0, 0, 0, 0]);
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

#[test]
fn segments_of_old_connections_neither_boot_nor_wait() {
    let mut s = Synjitsu::new(Config::new(SERVICE, MAC));
    let mut ack = syn(1000, 5, SERVICE);
    ack[14 + 20 + 13] = TCP_ACK; // flags: a bare ACK
    assert_eq!(
        s.on_frame(&ack),
        Verdict {
            action: Action::Dropped(Drop::Stale),
            boot: false
        }
    );
    assert_eq!(s.stats().dropped_stale, 1);
    assert!(
        s.on_frame(&syn(1000, 6, SERVICE)).boot,
        "a new connection still boots"
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
        let total = st.held + st.arp_replies + st.dropped_duplicate_syn + st.dropped_not_for_service + st.dropped_malformed + st.dropped_not_held + st.dropped_stale;
        prop_assert_eq!(total, frames.len() as u64, "every frame is accounted for once");
    }
}
