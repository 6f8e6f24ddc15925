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

/// Hypercalls: the guest hands the monitor the guest-physical address of
/// the call's argument structure, in 32 bits. On x86-64 with
/// `out dx, eax`, `dx = PORT_BASE + nr`; on arm64 with a 32-bit store
/// (`str wN`) to `MMIO_BASE + nr * MMIO_STRIDE`, an address with no memory
/// behind it, which KVM hands to the monitor as an MMIO exit.
pub mod hypercall {
    pub const PORT_BASE: u16 = 0x500;
    /// arm64: the hypercall page, right above the conduit window; the
    /// monitor maps its 2 MiB block as device memory.
    pub const MMIO_BASE: u64 =
        crate::conduit::WINDOW_BASE + crate::conduit::SLOTS as u64 * crate::conduit::SLOT_SIZE;
    pub const MMIO_STRIDE: u64 = 8;
    /// arm64: the monitor's exception vectors store here (vector `n` at
    /// `+ 8 n`) to report an exception; not for guests.
    pub const MMIO_EXCEPTION: u64 = MMIO_BASE + 0x1000;

    /// Hypercall numbers (offsets from [`PORT_BASE`]).
    pub const WALLTIME: u16 = 0;
    pub const CONSOLE_WRITE: u16 = 1;
    pub const POLL: u16 = 2;
    pub const NET_WRITE: u16 = 3;
    pub const NET_READ: u16 = 4;
    pub const HALT: u16 = 5;
    /// The conduit device (see [`crate::conduit`]).
    pub const CONDUIT_LISTEN: u16 = 6;
    pub const CONDUIT_CONNECT: u16 = 7;
    pub const CONDUIT_EVENTS: u16 = 8;
    pub const CONDUIT_CLOSE: u16 = 9;
    /// POLL that first signals the peers of the channels named: one exit
    /// for both, where a round trip would otherwise take two.
    pub const SIGNAL_POLL: u16 = 10;
    pub const COUNT: u16 = 11;
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
    /// Refused: a name that is not this guest's, a slot that is not open.
    pub const RET_DENIED: u64 = 4;
    /// Every channel slot is taken.
    pub const RET_BUSY: u64 = 5;

    /// Bits of [`Poll::ready`].
    pub const READY_NET: u64 = 1 << 0;
    /// A conduit event waits (CONDUIT_EVENTS).
    pub const READY_CONDUIT_EVENT: u64 = 1 << 1;
    /// A channel's peer signalled (SIGNAL_POLL says which).
    pub const READY_CONDUIT_SIGNAL: u64 = 1 << 2;

    /// Frames in NET_READ / NET_WRITE buffers are packed back to back, each as
    /// a little-endian `u16` length followed by that many bytes.
    pub const FRAME_HEADER_LEN: usize = 2;
}

/// The conduit device, version 1: named shared-memory channels (Conduit's
/// vchans) to other unikernels on the node. Each open channel is a slot of
/// the window above guest memory, mapped only while the channel is open;
/// it holds the vchan's control page and then its rings' own pages
/// (`jitsu_vchan::layout::Region`). The guest's own memory is never shared.
pub mod conduit {
    /// The version in [`crate::ConduitInfo::version`]; 0: no device.
    pub const VERSION: u32 = 1;
    /// Guest-physical address of slot 0: above the highest guest memory.
    pub const WINDOW_BASE: u64 = super::layout::MEM_MAX;
    /// Bytes of window per slot (a control page and two rings of order 20
    /// fit).
    pub const SLOT_SIZE: u64 = 4 << 20;
    /// Slots per guest; bit `n` of a signal mask is slot `n`.
    pub const SLOTS: u32 = 64;
    /// Names and ports are DNS labels of at most this many bytes.
    pub const LABEL_MAX: usize = 63;

    /// [`crate::ConduitEvent::kind`].
    /// A client connected to this guest's name: `slot`, `peer`, `port`.
    pub const EVENT_ACCEPTED: u32 = 1;
    /// This guest's connect succeeded: `slot` is open.
    pub const EVENT_CONNECTED: u32 = 2;
    /// This guest's connect failed: `slot` is free again, `reason` says why.
    pub const EVENT_REFUSED: u32 = 3;

    /// [`crate::ConduitEvent::reason`] of a refusal.
    /// No unikernel on this node listens under the name.
    pub const REFUSED_NO_LISTENER: u32 = 1;
    /// The listener does not allow this guest (not in its group, not on
    /// its allow-list).
    pub const REFUSED_NOT_ALLOWED: u32 = 2;
    /// The listener has no free channel slot.
    pub const REFUSED_BUSY: u32 = 3;
    /// The listener's monitor did not answer, or broke the protocol.
    pub const REFUSED_UNREACHABLE: u32 = 4;

    /// Ring orders (log2 of bytes) a connect asks for when it names none:
    /// 64 KiB each way.
    pub const DEFAULT_ORDER: u16 = 16;
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

/// CONDUIT_LISTEN: accept connections for `name` (the guest's own
/// Conduit name, which its monitor was given; any other is RET_DENIED).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConduitListen {
    pub name: u64,
    pub name_len: u64,
    /// Out.
    pub ret: u64,
}

/// CONDUIT_CONNECT: ask for a channel to `name` on `port`. Returns at once
/// with the slot reserved; an EVENT_CONNECTED or EVENT_REFUSED follows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConduitConnect {
    pub name: u64,
    pub name_len: u64,
    pub port: u64,
    pub port_len: u64,
    /// Ring orders wished for: left (this guest writes) in bits 0–15,
    /// right in 16–31; 0 for [`conduit::DEFAULT_ORDER`]. The listener's
    /// monitor has the last word (the control page says what it chose).
    pub orders: u64,
    /// Out: the slot.
    pub slot: u64,
    /// Out.
    pub ret: u64,
}

/// CONDUIT_EVENTS: fill `data` with waiting [`ConduitEvent`]s.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConduitEvents {
    pub data: u64,
    /// Bytes of room at `data`.
    pub len: u64,
    /// Out: events written.
    pub count: u64,
    /// Out.
    pub ret: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConduitEvent {
    pub slot: u32,
    /// `conduit::EVENT_*`.
    pub kind: u32,
    /// `conduit::REFUSED_*` for a refusal, else 0.
    pub reason: u32,
    /// Bytes of the channel's memory in the slot (what is mapped there;
    /// the rings the control page names must fit in it).
    pub size: u32,
    pub peer_len: u8,
    pub port_len: u8,
    pub _reserved: [u8; 6],
    /// The other end's name and the port (accepted: the client's; a
    /// connect's own otherwise).
    pub peer: [u8; 64],
    pub port: [u8; 64],
}

impl Default for ConduitEvent {
    fn default() -> ConduitEvent {
        ConduitEvent {
            slot: 0,
            kind: 0,
            reason: 0,
            size: 0,
            peer_len: 0,
            port_len: 0,
            _reserved: [0; 6],
            peer: [0; 64],
            port: [0; 64],
        }
    }
}

/// CONDUIT_CLOSE: the guest is done with `slot`: it leaves the window, the
/// peer is told, and the slot is free again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConduitClose {
    pub slot: u64,
    /// Out.
    pub ret: u64,
}

/// SIGNAL_POLL: signal the peer of every slot whose bit is set in `signal`,
/// then block as POLL does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalPoll {
    pub signal: u64,
    pub timeout_nanos: u64,
    /// Out: `READY_*` bits.
    pub ready: u64,
    /// Out: the slots whose peers signalled since the last poll.
    pub signalled: u64,
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

/// The conduit device as the guest finds it. `version == 0`: no device
/// (the monitor was given no Conduit name).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConduitInfo {
    pub version: u32,
    pub slots: u32,
    /// Guest-physical address of slot 0, and each slot's size.
    pub window: u64,
    pub slot_size: u64,
    /// The guest's own Conduit name (what CONDUIT_LISTEN takes).
    pub name_len: u32,
    pub _reserved: u32,
    pub name: [u8; 64],
}

impl Default for ConduitInfo {
    fn default() -> ConduitInfo {
        ConduitInfo {
            version: 0,
            slots: 0,
            window: 0,
            slot_size: 0,
            name_len: 0,
            _reserved: 0,
            name: [0; 64],
        }
    }
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
    pub counter_hz: u64,
    /// Wall clock at boot, nanoseconds since the Unix epoch.
    pub walltime_nanos: u64,
    /// Guest-physical address of the NUL-terminated command line.
    pub cmdline: u64,
    pub cmdline_len: u64,
    pub net: NetConfig,
    /// The guest may store its first `rdtsc` here; the monitor reads it to
    /// time the first guest instruction.
    pub entry_counter: u64,
    pub conduit: ConduitInfo,
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
        assert_eq!(size_of::<BootInfo>(), 192);
        assert_eq!(core::mem::offset_of!(BootInfo, entry_counter), 88);
        assert_eq!(size_of::<ConduitInfo>(), 96);
        assert_eq!(size_of::<ConduitListen>(), 24);
        assert_eq!(size_of::<ConduitConnect>(), 56);
        assert_eq!(size_of::<ConduitEvents>(), 32);
        assert_eq!(size_of::<ConduitEvent>(), 152);
        assert_eq!(size_of::<ConduitClose>(), 16);
        assert_eq!(size_of::<SignalPoll>(), 40);
        assert_eq!(size_of::<ConsoleWrite>(), 24);
        assert_eq!(size_of::<Poll>(), 24);
        assert_eq!(size_of::<NetIo>(), 40);
        assert_eq!(size_of::<Halt>(), 8);
    }

    // The conduit window lies above all guest memory, a signal mask has a
    // bit per slot, and slots are whole 2 MiB pages.
    const _: () = assert!(conduit::WINDOW_BASE >= layout::MEM_MAX);
    const _: () = assert!(conduit::SLOTS <= 64);
    const _: () = assert!(conduit::SLOT_SIZE.is_multiple_of(2 << 20));
    // arm64's hypercall page is a 2 MiB block of its own, in the window's
    // GiB, and every call and exception vector has its address in it.
    const _: () = assert!(hypercall::MMIO_BASE.is_multiple_of(2 << 20));
    const _: () = assert!(hypercall::MMIO_BASE / (1 << 30) == conduit::WINDOW_BASE / (1 << 30));
    const _: () = assert!(
        hypercall::MMIO_BASE + hypercall::PORT_WINDOW as u64 * hypercall::MMIO_STRIDE
            <= hypercall::MMIO_EXCEPTION
    );
    const _: () = assert!(hypercall::MMIO_EXCEPTION + 16 * 8 <= hypercall::MMIO_BASE + (2 << 20));

    #[test]
    fn cmdline_fits_below_the_image() {
        let end = CMDLINE_ADDR + layout::CMDLINE_MAX as u64 + 1;
        assert!(end <= layout::IMAGE_MIN_ADDR);
    }
}
