//! The text values XenStore carries for a NIC, parsed strictly: anything
//! but the exact form is refused.

/// `02:4a:0a:00:00:02`: six two-digit hex bytes.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in mac.iter_mut() {
        let part = parts.next().filter(|p| p.len() == 2)?;
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// `10.0.0.2`: four decimal bytes.
pub fn parse_ipv4(text: &str) -> Option<[u8; 4]> {
    let mut ip = [0u8; 4];
    let mut parts = text.trim().split('.');
    for byte in ip.iter_mut() {
        let part = parts
            .next()
            .filter(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))?;
        *byte = part.parse().ok()?;
    }
    parts.next().is_none().then_some(ip)
}

/// `10.0.0.2/24`.
pub fn parse_cidr(text: &str) -> Option<([u8; 4], u8)> {
    let (addr, prefix) = text.trim().split_once('/')?;
    let prefix = prefix
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| prefix.parse::<u8>().ok())
        .flatten()
        .filter(|p| *p <= 32)?;
    Some((parse_ipv4(addr)?, prefix))
}

/// An MTU from 68 (IPv4's minimum) to 9000.
pub fn parse_mtu(text: &str) -> Option<u16> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|m| (68..=9000).contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn written_values_read_back(mac in any::<[u8; 6]>(), ip in any::<[u8; 4]>(), prefix in 0u8..=32) {
            let m = mac.map(|b| format!("{b:02x}")).join(":");
            prop_assert_eq!(parse_mac(&m), Some(mac));
            let i = ip.map(|b| b.to_string()).join(".");
            prop_assert_eq!(parse_ipv4(&i), Some(ip));
            prop_assert_eq!(parse_cidr(&format!("{i}/{prefix}")), Some((ip, prefix)));
        }

        /// Any text: an answer, never a panic; and what is accepted is
        /// exactly what formatting the value again gives (no sloppy forms).
        #[test]
        fn any_text_is_refused_or_canonical(text in "\\PC{0,24}") {
            if let Some(mac) = parse_mac(&text) {
                prop_assert_eq!(mac.map(|b| format!("{b:02x}")).join(":"), text.trim().to_ascii_lowercase());
            }
            if let Some(ip) = parse_ipv4(&text) {
                let again = ip.map(|b| b.to_string()).join(".");
                prop_assert_eq!(parse_ipv4(&again), Some(ip));
            }
            let _ = parse_cidr(&text);
            if let Some(mtu) = parse_mtu(&text) {
                prop_assert!((68..=9000).contains(&mtu));
            }
        }
    }

    #[test]
    fn malformed_values_are_refused() {
        for bad in [
            "",
            "02:4a:0a:00:00",
            "02:4a:0a:00:00:02:03",
            "2:4a:a:0:0:2",
            "zz:4a:0a:00:00:02",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
        for bad in [
            "",
            "10.0.0",
            "10.0.0.256",
            "10.0.0.2.1",
            "+1.0.0.2",
            "10..0.2",
        ] {
            assert_eq!(parse_ipv4(bad), None, "{bad:?}");
        }
        for bad in ["10.0.0.2", "10.0.0.2/33", "10.0.0.2/", "10.0.0.2/+8"] {
            assert_eq!(parse_cidr(bad), None, "{bad:?}");
        }
        for bad in ["", "67", "9001", "-1", "1500 MTU"] {
            assert_eq!(parse_mtu(bad), None, "{bad:?}");
        }
    }
}
