//! What the platform tells the guest at entry.

use jitsu_abi::NetConfig;

/// The guest's view of its boot information.
pub struct Boot {
    pub(crate) cmdline: &'static str,
    pub(crate) mem_size: u64,
    pub(crate) net: Option<NetConfig>,
    #[cfg(not(feature = "xen-pvh"))]
    pub(crate) info: &'static jitsu_abi::BootInfo,
}

impl Boot {
    /// The KVM monitor's boot information, as it wrote it.
    #[cfg(not(feature = "xen-pvh"))]
    pub fn info(&self) -> &'static jitsu_abi::BootInfo {
        self.info
    }

    /// The command line (`jitsu run KERNEL -- ARGS...`, joined by spaces).
    pub fn cmdline(&self) -> &'static str {
        self.cmdline
    }

    /// Bytes of guest memory.
    pub fn mem_size(&self) -> u64 {
        self.mem_size
    }

    /// The network configuration, if the guest was given a NIC.
    pub fn net(&self) -> Option<NetConfig> {
        self.net
    }
}
