//! Who may ask the daemon: explicit ranges (`--allow CIDR`), or by default
//! the networks of the node's own interfaces (loopback, the bridge, the pod
//! network), so that the directory and its forwarder serve the node and
//! nobody beyond it. Interfaces come and go (the shim makes its bridge at
//! the first container), so a source outside the known ranges makes the
//! daemon look at the interfaces again, at most once a second.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0:?} is not an address range (want ADDR/PREFIX, as in 10.0.0.0/8 or fd00::/8)")]
pub struct BadCidr(String);

/// An address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(s: &str) -> Result<Cidr, BadCidr> {
        let bad = || BadCidr(s.to_string());
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let ip: IpAddr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        if prefix > bits {
            return Err(bad());
        }
        Ok(Cidr { net: ip, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

pub struct Allow {
    /// `None`: the node's own ranges.
    fixed: Option<Vec<Cidr>>,
    node: Mutex<(Vec<Cidr>, Option<Instant>)>,
}

const REREAD: Duration = Duration::from_secs(1);

impl Allow {
    pub fn only(ranges: Vec<Cidr>) -> Allow {
        Allow {
            fixed: Some(ranges),
            node: Mutex::new((Vec::new(), None)),
        }
    }

    pub fn node_ranges() -> Allow {
        Allow {
            fixed: None,
            node: Mutex::new((interface_ranges(), Some(Instant::now()))),
        }
    }

    pub fn admits(&self, ip: IpAddr) -> bool {
        if let Some(ranges) = &self.fixed {
            return ranges.iter().any(|r| r.contains(ip));
        }
        let mut node = self.node.lock().unwrap_or_else(|e| e.into_inner());
        if node.0.iter().any(|r| r.contains(ip)) {
            return true;
        }
        if node.1.is_some_and(|read| read.elapsed() < REREAD) {
            return false;
        }
        *node = (interface_ranges(), Some(Instant::now()));
        node.0.iter().any(|r| r.contains(ip))
    }
}

/// The networks of the addresses on this network namespace's interfaces.
fn interface_ranges() -> Vec<Cidr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut ranges = Vec::new();
    for ifa in addrs {
        let (Some(addr), Some(mask)) = (ifa.address, ifa.netmask) else {
            continue;
        };
        let range = match (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            (Some(a), Some(m)) => Some(Cidr {
                net: IpAddr::V4(a.ip()),
                prefix: u32::from(m.ip()).count_ones() as u8,
            }),
            _ => match (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
                (Some(a), Some(m)) => Some(Cidr {
                    net: IpAddr::V6(a.ip()),
                    prefix: u128::from(m.ip()).count_ones() as u8,
                }),
                _ => None,
            },
        };
        ranges.extend(range);
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse_and_contain() {
        let ten = cidr("10.77.0.0/16");
        assert!(ten.contains("10.77.3.4".parse().unwrap()));
        assert!(!ten.contains("10.78.0.1".parse().unwrap()));
        assert!(
            ten.contains("::ffff:10.77.0.9".parse().unwrap()),
            "v4-mapped"
        );
        assert!(cidr("0.0.0.0/0").contains("192.0.2.1".parse().unwrap()));
        assert!(cidr("fd00::/8").contains("fd12::1".parse().unwrap()));
        assert!(!cidr("fd00::/8").contains("10.0.0.1".parse().unwrap()));
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "::/129",
            "ten/8",
            "10.0.0.0/x",
            "",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_node_ranges_include_loopback() {
        let allow = Allow::node_ranges();
        assert!(allow.admits("127.0.0.1".parse().unwrap()));
        assert!(!Allow::only(vec![cidr("10.0.0.0/8")]).admits("127.0.0.1".parse().unwrap()));
    }

    proptest! {
        /// A /32 (or /128) admits exactly its address; /0 admits its family.
        #[test]
        fn host_ranges_are_exact(a in any::<u32>(), b in any::<u32>()) {
            let (a, b) = (std::net::Ipv4Addr::from(a), std::net::Ipv4Addr::from(b));
            let host = cidr(&format!("{a}/32"));
            prop_assert_eq!(host.contains(IpAddr::V4(b)), a == b);
            let everything = cidr(&format!("{a}/0"));
            prop_assert!(everything.contains(IpAddr::V4(b)));
        }
    }
}
