//! The Jitsu guest ABI, version 1: the single source of the constants and
//! structures shared by the monitor (`jitsu-runtime`) and the guest SDK
//! (`guest/sdk`). `runtime/kvm/ABI.md` describes the same contract in prose.
//!
//! Every structure here is `#[repr(C)]`, made only of fixed-width integers and
//! byte arrays, so that host and guest agree on its layout without padding
//! surprises; the layout tests at the bottom pin the sizes.

#![no_std]

/// Bumped on any incompatible change. The monitor refuses a guest whose ELF
/// note names another version.
pub const ABI_VERSION: u32 = 1;

/// Owner name of the ELF note (`Elf64_Nhdr` name, NUL included).
pub const NOTE_NAME: &[u8; 6] = b"JITSU\0";
/// Note type of the ABI note; the descriptor is an [`AbiNote`].
pub const NOTE_TYPE_ABI: u32 = 0x4a49_5431; // "JIT1"
/// ELF section the SDK puts the note in.
pub const NOTE_SECTION: &str = ".note.jitsu";

/// The note's descriptor.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbiNote {
    pub abi_version: u32,
    /// Reserved, zero.
    pub flags: u32,
}

/// The ELF note as it lies in the section, header included.
#[repr(C, align(4))]
#[derive(Clone, Copy)]
pub struct AbiNoteSection {
    pub namesz: u32,
    pub descsz: u32,
    pub kind: u32,
    pub name: [u8; 8],
    pub desc: AbiNote,
}

impl AbiNoteSection {
    pub const CURRENT: AbiNoteSection = AbiNoteSection {
        namesz: NOTE_NAME.len() as u32,
        descsz: core::mem::size_of::<AbiNote>() as u32,
        kind: NOTE_TYPE_ABI,
        name: *b"JITSU\0\0\0",
        desc: AbiNote {
            abi_version: ABI_VERSION,
            flags: 0,
        },
    };
}

/// Guest memory map. Everything below [`IMAGE_MIN_ADDR`] belongs to the
/// monitor; the image is loaded at its physical = virtual addresses above it.
pub mod layout {
    /// Page size of the guest's page tables for the image and boot info.
    pub const PAGE_SIZE: u64 = 0x1000;
    /// Guest memory sizes are multiples of this (the heap uses 2 MiB pages).
    pub const MEM_ALIGN: u64 = 0x20_0000;
    pub const MEM_MIN: u64 = MEM_ALIGN;
    /// Hypercall arguments are 32-bit guest-physical addresses, so guest memory
    /// ends at 4 GiB.
    pub const MEM_MAX: u64 = 4 << 30;
    /// Boot info and command line, readable and writable by the guest.
    pub const BOOT_INFO_ADDR: u64 = 0x1000;
    /// Lowest address an image segment may use.
    pub const IMAGE_MIN_ADDR: u64 = 0x10_0000;
    /// Longest command line, NUL excluded.
    pub const CMDLINE_MAX: usize = 2048;
}

/// Hypercalls: `out dx, eax` with `dx = HYPERCALL_PORT_BASE + nr` and
/// `eax` = guest-physical address of the call's argument structure.
pub mod hypercall {
    pub const PORT_BASE: u16 = 0x500;

    /// Hypercall numbers (offsets from [`PORT_BASE`]).
    pub const WALLTIME: u16 = 0;
    pub const CONSOLE_WRITE: u16 = 1;
    pub const POLL: u16 = 2;
    pub const NET_WRITE: u16 = 3;
    pub const NET_READ: u16 = 4;
    pub const HALT: u16 = 5;
    pub const COUNT: u16 = 6;
    /// Ports `PORT_BASE..PORT_BASE + PORT_WINDOW` are open to the guest (a
    /// 4-byte `out` touches four of them); numbers past `COUNT` are refused.
    pub const PORT_WINDOW: u16 = 16;

    /// Result codes in the `ret` field of the argument structures.
    pub const RET_OK: u64 = 0;
    /// The call is valid but the device is absent (no `--net`).
    pub const RET_NO_DEVICE: u64 = 1;
    /// A host-side I/O error; the guest may retry.
    pub const RET_IO_ERROR: u64 = 2;
    /// Malformed batch (a frame length that runs past the buffer, or a
    /// frame larger than the MTU allows). Nothing after it was sent.
    pub const RET_INVALID: u64 = 3;

    /// Bits of [`Poll::ready`].
    pub const READY_NET: u64 = 1 << 0;

    /// Frames in NET_READ / NET_WRITE buffers are packed back to back, each as
    /// a little-endian `u16` length followed by that many bytes.
    pub const FRAME_HEADER_LEN: usize = 2;
}

/// Ethernet header (14) + the largest MTU the monitor offers a guest.
pub const MTU_MAX: u16 = 9000;
pub const ETHERNET_HEADER_LEN: usize = 14;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Walltime {
    /// Out: nanoseconds since the Unix epoch.
    pub nanos: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleWrite {
    pub data: u64,
    pub len: u64,
    /// Out.
    pub ret: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Poll {
    /// Block at most this long; 0 = just report readiness.
    pub timeout_nanos: u64,
    /// Out: `READY_*` bits of the devices that have input.
    pub ready: u64,
    /// Out.
    pub ret: u64,
}

/// NET_WRITE and NET_READ share this structure.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetIo {
    /// Buffer of packed frames (see [`hypercall::FRAME_HEADER_LEN`]).
    pub data: u64,
    /// Write: bytes of packed frames. Read: capacity of the buffer.
    pub len: u64,
    /// Out: frames moved.
    pub frames: u64,
    /// Out: read: bytes of packed frames written into the buffer.
    pub used: u64,
    /// Out.
    pub ret: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Halt {
    /// The exit status of the monitor process (0–255).
    pub status: u64,
}

/// Network configuration handed to the guest. `present == 0` means no NIC.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    pub present: u8,
    pub prefix_len: u8,
    pub mac: [u8; 6],
    pub ipv4: [u8; 4],
    pub gateway: [u8; 4],
    pub mtu: u16,
    pub _reserved: [u8; 6],
}

/// Written by the monitor at [`layout::BOOT_INFO_ADDR`]; RDI points at it on entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootInfo {
    pub magic: u64,
    pub abi_version: u32,
    pub _reserved: u32,
    pub mem_size: u64,
    /// First byte past the highest loaded segment: the heap may start here.
    pub image_end: u64,
    pub tsc_hz: u64,
    /// Wall clock at boot, nanoseconds since the Unix epoch.
    pub walltime_nanos: u64,
    /// Guest-physical address of the NUL-terminated command line.
    pub cmdline: u64,
    pub cmdline_len: u64,
    pub net: NetConfig,
    /// The guest may store its first `rdtsc` here; the monitor reads it to
    /// time the first guest instruction.
    pub entry_tsc: u64,
}

/// Why a command line cannot be handed to a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdlineError {
    /// Longer than [`layout::CMDLINE_MAX`] bytes (the length it is).
    TooLong(usize),
    /// It holds a NUL byte, which would end it early in the guest.
    Nul,
}

impl core::fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CmdlineError::TooLong(n) => write!(
                f,
                "command line is {n} bytes, at most {} are allowed",
                layout::CMDLINE_MAX
            ),
            CmdlineError::Nul => f.write_str("command line contains a NUL byte"),
        }
    }
}

/// Whether `cmdline` fits the boot info.
pub fn check_cmdline(cmdline: &str) -> Result<(), CmdlineError> {
    if cmdline.len() > layout::CMDLINE_MAX {
        return Err(CmdlineError::TooLong(cmdline.len()));
    }
    if cmdline.contains('\0') {
        return Err(CmdlineError::Nul);
    }
    Ok(())
}

pub const BOOT_INFO_MAGIC: u64 = 0x4a49_5453_5542_4f4f; // "JITSUBOO"

/// Where the command line lies: right after the boot info, on the same page run.
pub const CMDLINE_ADDR: u64 = layout::BOOT_INFO_ADDR + core::mem::size_of::<BootInfo>() as u64;

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_are_pinned() {
        assert_eq!(size_of::<AbiNote>(), 8);
        assert_eq!(size_of::<AbiNoteSection>(), 28);
        assert_eq!(size_of::<NetConfig>(), 24);
        assert_eq!(size_of::<BootInfo>(), 96);
        assert_eq!(size_of::<ConsoleWrite>(), 24);
        assert_eq!(size_of::<Poll>(), 24);
        assert_eq!(size_of::<NetIo>(), 40);
        assert_eq!(size_of::<Halt>(), 8);
    }

    #[test]
    fn cmdline_fits_below_the_image() {
        let end = CMDLINE_ADDR + layout::CMDLINE_MAX as u64 + 1;
        assert!(end <= layout::IMAGE_MIN_ADDR);
    }
}
