//! The boot information the guest finds at RDI on entry.

use std::net::Ipv4Addr;

use jitsu_abi::{layout, BootInfo, NetConfig, ABI_VERSION, BOOT_INFO_MAGIC, CMDLINE_ADDR};
use thiserror::Error;

use crate::memory::{GuestMemory, MemoryError};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BootInfoError {
    #[error("command line is {0} bytes, at most {max} are allowed", max = layout::CMDLINE_MAX)]
    CmdlineTooLong(usize),
    #[error("command line contains a NUL byte")]
    CmdlineNul,
    #[error("prefix length /{0} is not valid for IPv4")]
    BadPrefix(u8),
}

/// The guest's network identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestNet {
    pub mac: [u8; 6],
    pub ipv4: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub mtu: u16,
}

impl GuestNet {
    pub fn to_abi(&self) -> Result<NetConfig, BootInfoError> {
        if self.prefix_len > 32 {
            return Err(BootInfoError::BadPrefix(self.prefix_len));
        }
        Ok(NetConfig {
            present: 1,
            prefix_len: self.prefix_len,
            mac: self.mac,
            ipv4: self.ipv4.octets(),
            gateway: self.gateway.map_or([0; 4], |g| g.octets()),
            mtu: self.mtu,
            _reserved: [0; 6],
        })
    }
}

pub fn check_cmdline(cmdline: &str) -> Result<(), BootInfoError> {
    jitsu_abi::check_cmdline(cmdline).map_err(|e| match e {
        jitsu_abi::CmdlineError::TooLong(n) => BootInfoError::CmdlineTooLong(n),
        jitsu_abi::CmdlineError::Nul => BootInfoError::CmdlineNul,
    })
}

/// What goes into the boot info besides what the memory itself knows.
pub struct BootParams<'a> {
    pub image_end: u64,
    pub counter_hz: u64,
    pub walltime_nanos: u64,
    pub cmdline: &'a str,
    pub net: Option<GuestNet>,
    /// The guest's Conduit name, if it has the conduit device.
    pub conduit: Option<&'a str>,
}

#[derive(Debug, Error)]
pub enum WriteError {
    #[error(transparent)]
    Invalid(#[from] BootInfoError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

fn conduit_info(name: &str) -> jitsu_abi::ConduitInfo {
    let mut info = jitsu_abi::ConduitInfo {
        version: jitsu_abi::conduit::VERSION,
        slots: jitsu_abi::conduit::SLOTS,
        window: jitsu_abi::conduit::WINDOW_BASE,
        slot_size: jitsu_abi::conduit::SLOT_SIZE,
        ..jitsu_abi::ConduitInfo::default()
    };
    let len = name.len().min(jitsu_abi::conduit::LABEL_MAX);
    info.name[..len].copy_from_slice(&name.as_bytes()[..len]);
    info.name_len = len as u32;
    info
}

/// Writes the boot info and command line; returns the boot info's address.
pub fn write(mem: &mut GuestMemory, params: &BootParams) -> Result<u64, WriteError> {
    check_cmdline(params.cmdline)?;
    let info = BootInfo {
        magic: BOOT_INFO_MAGIC,
        abi_version: ABI_VERSION,
        mem_size: mem.size(),
        image_end: params.image_end,
        counter_hz: params.counter_hz,
        walltime_nanos: params.walltime_nanos,
        cmdline: CMDLINE_ADDR,
        cmdline_len: params.cmdline.len() as u64,
        net: match &params.net {
            Some(net) => net.to_abi()?,
            None => NetConfig::default(),
        },
        conduit: params
            .conduit
            .map_or_else(jitsu_abi::ConduitInfo::default, conduit_info),
        ..BootInfo::default()
    };
    mem.write(layout::BOOT_INFO_ADDR, &info)?;
    let bytes = params.cmdline.as_bytes();
    let dest = mem.slice_mut(CMDLINE_ADDR, bytes.len() as u64 + 1)?;
    dest[..bytes.len()].copy_from_slice(bytes);
    dest[bytes.len()] = 0;
    Ok(layout::BOOT_INFO_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn boot_info_round_trips(
            cmdline in "[ -~]{0,2048}",
            mac in any::<[u8; 6]>(),
            ip in any::<[u8; 4]>(),
            prefix in 0u8..=32,
            gw in proptest::option::of(any::<[u8; 4]>()),
            mtu in 68u16..=9000,
            counter_hz in any::<u64>(),
        ) {
            let mut mem = GuestMemory::new(2 << 20).unwrap();
            let net = GuestNet { mac, ipv4: ip.into(), prefix_len: prefix, gateway: gw.map(Into::into), mtu };
            let params = BootParams { image_end: 0x10_3000, counter_hz, walltime_nanos: 7, cmdline: &cmdline, net: Some(net), conduit: None };
            let at = write(&mut mem, &params).unwrap();
            let info: BootInfo = mem.read(at).unwrap();
            prop_assert_eq!(info.magic, BOOT_INFO_MAGIC);
            prop_assert_eq!(info.mem_size, 2 << 20);
            prop_assert_eq!(info.counter_hz, counter_hz);
            prop_assert_eq!(info.net.mac, mac);
            prop_assert_eq!(info.net.ipv4, ip);
            prop_assert_eq!(info.net.gateway, gw.unwrap_or([0; 4]));
            prop_assert_eq!(info.net.prefix_len, prefix);
            let stored = mem.slice(info.cmdline, info.cmdline_len + 1).unwrap();
            prop_assert_eq!(&stored[..cmdline.len()], cmdline.as_bytes());
            prop_assert_eq!(stored[cmdline.len()], 0);
            prop_assert!(info.cmdline + info.cmdline_len < layout::BOOT_INFO_ADDR + layout::PAGE_SIZE);
        }

        #[test]
        fn bad_command_lines_are_refused(extra in 1usize..64, prefix in 33u8..) {
            let long = "x".repeat(layout::CMDLINE_MAX + extra);
            prop_assert_eq!(check_cmdline(&long), Err(BootInfoError::CmdlineTooLong(long.len())));
            prop_assert_eq!(check_cmdline("a\0b"), Err(BootInfoError::CmdlineNul));
            let net = GuestNet { mac: [2, 0, 0, 0, 0, 1], ipv4: Ipv4Addr::LOCALHOST, prefix_len: prefix, gateway: None, mtu: 1500 };
            prop_assert_eq!(net.to_abi(), Err(BootInfoError::BadPrefix(prefix)));
        }
    }
}
