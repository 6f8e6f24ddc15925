//! The NIC's configuration: the MAC from the vif's frontend node, the
//! addresses from the keys the Jitsu backend writes under the domain's home
//! before it unpauses the domain (`jitsu/ipv4` = "10.0.0.2/24", optional
//! `jitsu/gateway` and `jitsu/mtu`). No vif: no NIC.

use core::fmt;

use jitsu_abi::NetConfig;
use jitsu_xen_abi::text::{parse_cidr, parse_ipv4, parse_mac, parse_mtu};

use super::xenstore::{self, Error as StoreError};

#[derive(Debug)]
pub enum Error {
    Store(&'static str, StoreError),
    Malformed(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Store(key, err) => write!(f, "reading {key}: {err}"),
            Error::Malformed(key) => write!(f, "{key} is malformed"),
        }
    }
}

pub const VIF: &str = "device/vif/0";
const DEFAULT_MTU: u16 = 1500;

pub fn read() -> Result<Option<NetConfig>, Error> {
    let mut buf = [0u8; 64];
    let mac = match xenstore::read("device/vif/0/mac", &mut buf) {
        Ok(mac) => parse_mac(mac).ok_or(Error::Malformed("device/vif/0/mac"))?,
        Err(err) if err.is_missing() => return Ok(None),
        Err(err) => return Err(Error::Store("device/vif/0/mac", err)),
    };
    let mut config = NetConfig {
        present: 1,
        mac,
        mtu: DEFAULT_MTU,
        ..NetConfig::default()
    };
    let ipv4 = xenstore::read("jitsu/ipv4", &mut buf).map_err(|e| Error::Store("jitsu/ipv4", e))?;
    (config.ipv4, config.prefix_len) = parse_cidr(ipv4).ok_or(Error::Malformed("jitsu/ipv4"))?;
    match xenstore::read("jitsu/gateway", &mut buf) {
        Ok(gw) => config.gateway = parse_ipv4(gw).ok_or(Error::Malformed("jitsu/gateway"))?,
        Err(err) if err.is_missing() => {}
        Err(err) => return Err(Error::Store("jitsu/gateway", err)),
    }
    match xenstore::read("jitsu/mtu", &mut buf) {
        Ok(mtu) => config.mtu = parse_mtu(mtu).ok_or(Error::Malformed("jitsu/mtu"))?,
        Err(err) if err.is_missing() => {}
        Err(err) => return Err(Error::Store("jitsu/mtu", err)),
    }
    Ok(Some(config))
}
