//! What the monitor tells the guest at entry.

use jitsu_abi::{layout, BootInfo, NetConfig, ABI_VERSION, BOOT_INFO_MAGIC};

/// The guest's view of its boot information.
pub struct Boot {
    info: &'static BootInfo,
    cmdline: &'static str,
}

impl Boot {
    /// Checks the boot info and sets up the clock and the heap.
    pub(crate) fn init(info: &'static BootInfo) -> Boot {
        if info.magic != BOOT_INFO_MAGIC || info.abi_version != ABI_VERSION {
            crate::hypercall::halt(70);
        }
        crate::clock::init(info.entry_tsc, info.tsc_hz);
        crate::heap::init(info.image_end, info.mem_size);
        Boot {
            info,
            cmdline: cmdline(info),
        }
    }

    pub fn info(&self) -> &BootInfo {
        self.info
    }

    /// The command line (`jitsu run KERNEL -- ARGS...`, joined by spaces).
    pub fn cmdline(&self) -> &'static str {
        self.cmdline
    }

    pub fn mem_size(&self) -> u64 {
        self.info.mem_size
    }

    /// The network configuration, if the monitor gave the guest a NIC.
    pub fn net(&self) -> Option<NetConfig> {
        (self.info.net.present != 0).then_some(self.info.net)
    }
}

fn cmdline(info: &BootInfo) -> &'static str {
    let len = info.cmdline_len as usize;
    if len > layout::CMDLINE_MAX || info.cmdline < layout::BOOT_INFO_ADDR {
        return "";
    }
    // SAFETY: the monitor wrote `len` bytes of command line at `cmdline`, on
    // the boot-info page, which stays mapped and is not written again.
    let bytes = unsafe { core::slice::from_raw_parts(info.cmdline as *const u8, len) };
    core::str::from_utf8(bytes).unwrap_or("")
}
