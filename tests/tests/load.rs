//! Load on real timelines: a hundred parked services on one node, parked
//! past their idle timeout, and a hundred first connections at once.

use std::time::Duration;

use jitsu_e2e::fleet::Fleet;

const SERVICES: usize = 100;

/// Every client got its page with one SYN, and every service has booted
/// `boots` times.
fn assert_storm_served(fleet: &Fleet, boots: u64) {
    let answers = fleet.storm();
    let mut took: Vec<Duration> = answers.iter().map(|a| a.took).collect();
    took.sort();
    eprintln!(
        "{SERVICES} at once: median {:?}, slowest {:?}",
        took[took.len() / 2],
        took[took.len() - 1]
    );
    for (i, a) in answers.iter().enumerate() {
        assert!(
            a.reply.starts_with("HTTP/1.1 200"),
            "service {i}: {}",
            a.reply
        );
        assert_eq!(a.retransmissions, 0, "service {i}: one SYN");
    }
    for (i, s) in fleet.statuses().iter().enumerate() {
        assert_eq!(s["boots"], boots, "service {i} booted once per storm: {s}");
    }
}

#[test]
fn a_hundred_first_connections_at_once_after_a_long_parking() {
    const IDLE: Duration = Duration::from_secs(1);
    let fleet = Fleet::start(SERVICES, &["--idle-timeout", "1s"]);
    // Never booted since start, parked past the idle timeout.
    std::thread::sleep(IDLE * 2);
    assert_storm_served(&fleet, 1);
    // Re-parked by idleness, then left parked past the timeout again.
    fleet.wait_until_all(
        |s| s["state"] == "parked" && s["boots"] == 1,
        Duration::from_secs(30),
    );
    std::thread::sleep(IDLE * 3);
    assert_storm_served(&fleet, 2);
}
