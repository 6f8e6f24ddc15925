//! Parsers for what monitors' users type, whatever the hypervisor: sizes,
//! durations, MAC addresses, IPv4 prefixes.

use std::net::Ipv4Addr;

pub use jitsu_spec::units::{parse_duration, parse_size};

pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("{s:?} is not a MAC address (want aa:bb:cc:dd:ee:ff)");
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in mac.iter_mut() {
        let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "{s} is a multicast address; a NIC needs a unicast one"
        ));
    }
    Ok(mac)
}

/// `10.0.0.2/24`.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} needs a prefix length, as in 10.0.0.2/24"))?;
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| format!("/{prefix} is not an IPv4 prefix length"))?;
    Ok((ip, prefix))
}

/// A locally administered MAC derived from the guest's address, so the same
/// service keeps the same MAC across runs (and neighbour caches stay valid).
pub fn default_mac(ip: Option<Ipv4Addr>) -> [u8; 6] {
    let [a, b, c, d] = ip.map_or([0, 0, 0, 1], |ip| ip.octets());
    [0x02, 0x4a, a, b, c, d]
}

/// CLOCK_MONOTONIC in nanoseconds, comparable with other processes' readings.
pub fn monotonic_nanos() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |ts| {
        ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
    })
}

/// One of Jitsu's binaries: `$<var>`, else the binary `name` beside the
/// running one, else `name` on PATH.
pub fn our_binary(var: &str, name: &str) -> std::path::PathBuf {
    if let Some(bin) = std::env::var_os(var) {
        return bin.into();
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.join(name)));
    sibling
        .filter(|p| p.exists())
        .unwrap_or_else(|| name.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:4a:0a:00:00:02"), Ok([2, 0x4a, 10, 0, 0, 2]));
        assert!(parse_mac("02:4a:0a:00:00").is_err());
        assert!(parse_mac("02:4a:0a:00:00:02:03").is_err());
        assert!(parse_mac("01:00:5e:00:00:01").is_err());
        assert!(parse_mac("zz:4a:0a:00:00:02").is_err());
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.0.0.2/24"),
            Ok((Ipv4Addr::new(10, 0, 0, 2), 24))
        );
        assert!(parse_cidr("10.0.0.2").is_err());
        assert!(parse_cidr("10.0.0.2/33").is_err());
        assert!(parse_cidr("10.0.0/8").is_err());
    }
}
