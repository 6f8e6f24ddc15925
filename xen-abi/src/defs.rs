//! The few parts of Xen's public interface (4.17, `xen/include/public`) that
//! Jitsu's Xen guests use, written from `/usr/include/xen` (libxen-dev). The
//! `xen-sys` crate is an empty placeholder and the other Xen crates bind
//! dom0's libraries for std programs, so none fits a no_std guest; the
//! layouts are checked by the size assertions at the bottom.

/// Hypercall numbers (`xen.h`).
pub mod nr {
    pub const MEMORY_OP: usize = 12;
    pub const GRANT_TABLE_OP: usize = 20;
    pub const SCHED_OP: usize = 29;
    pub const EVENT_CHANNEL_OP: usize = 32;
    pub const HVM_OP: usize = 34;
}

pub const DOMID_SELF: u16 = 0x7ff0;

/// `hvm/start_info.h`: what Xen's PVH loader hands the guest in EBX.
pub const START_INFO_MAGIC: u32 = 0x336e_c578;
#[repr(C)]
pub struct HvmStartInfo {
    pub magic: u32,
    pub version: u32,
    pub flags: u32,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    pub cmdline_paddr: u64,
    pub rsdp_paddr: u64,
    pub memmap_paddr: u64,
    pub memmap_entries: u32,
    pub reserved: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct HvmMemmapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
    pub reserved: u32,
}
pub const MEMMAP_RAM: u32 = 1;

/// `elfnote.h`: the 32-bit physical entry point that makes an image PVH.
pub const ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// `hvm/hvm_op.h`, `hvm/params.h`.
pub const HVMOP_GET_PARAM: usize = 1;
pub const HVM_PARAM_STORE_PFN: u32 = 1;
pub const HVM_PARAM_STORE_EVTCHN: u32 = 2;
pub const HVM_PARAM_CONSOLE_PFN: u32 = 17;
pub const HVM_PARAM_CONSOLE_EVTCHN: u32 = 18;
#[repr(C)]
pub struct HvmParam {
    pub domid: u16,
    pub pad: u16,
    pub index: u32,
    pub value: u64,
}

/// `sched.h`.
pub const SCHEDOP_SHUTDOWN: usize = 2;
pub const SCHEDOP_POLL: usize = 3;
pub const SHUTDOWN_POWEROFF: u32 = 0;
pub const SHUTDOWN_CRASH: u32 = 3;
#[repr(C)]
pub struct SchedShutdown {
    pub reason: u32,
}
#[repr(C)]
pub struct SchedPoll {
    pub ports: *const u32,
    pub nr_ports: u32,
    /// Absolute Xen system time in nanoseconds; 0 waits without a deadline.
    pub timeout: u64,
}

/// `event_channel.h`.
pub const EVTCHNOP_BIND_INTERDOMAIN: usize = 0;
pub const EVTCHNOP_CLOSE: usize = 3;
pub const EVTCHNOP_SEND: usize = 4;
pub const EVTCHNOP_ALLOC_UNBOUND: usize = 6;
#[repr(C)]
pub struct EvtchnBindInterdomain {
    pub remote_dom: u16,
    pub remote_port: u32,
    /// Out.
    pub local_port: u32,
}
#[repr(C)]
pub struct EvtchnClose {
    pub port: u32,
}
#[repr(C)]
pub struct EvtchnSend {
    pub port: u32,
}
#[repr(C)]
pub struct EvtchnAllocUnbound {
    pub dom: u16,
    pub remote_dom: u16,
    pub port: u32,
}

/// `memory.h`.
pub const XENMEM_ADD_TO_PHYSMAP: usize = 7;
pub const XENMAPSPACE_SHARED_INFO: u32 = 0;
pub const XENMAPSPACE_GRANT_TABLE: u32 = 1;
#[repr(C)]
pub struct AddToPhysmap {
    pub domid: u16,
    pub size: u16,
    pub space: u32,
    pub idx: u64,
    pub gpfn: u64,
}

/// `xen.h` (x86_64): one vCPU's time, as the hypervisor keeps it current.
#[repr(C)]
pub struct VcpuTimeInfo {
    pub version: u32,
    pub pad0: u32,
    pub tsc_timestamp: u64,
    pub system_time: u64,
    pub tsc_to_system_mul: u32,
    pub tsc_shift: i8,
    pub flags: u8,
    pub pad1: [u8; 2],
}

#[repr(C)]
pub struct VcpuInfo {
    pub evtchn_upcall_pending: u8,
    pub evtchn_upcall_mask: u8,
    pub evtchn_pending_sel: u64,
    pub arch: [u64; 2],
    pub time: VcpuTimeInfo,
}

pub const LEGACY_MAX_VCPUS: usize = 32;
/// Event channels of the 2-level ABI: one bit each in these words.
pub const EVTCHN_WORDS: usize = 64;
/// The shared info page: `N` legacy vCPU slots of an architecture's
/// `V`, then the event channel words and the wall clock.
#[repr(C)]
pub struct SharedInfoOf<V, const N: usize> {
    pub vcpu_info: [V; N],
    pub evtchn_pending: [u64; EVTCHN_WORDS],
    pub evtchn_mask: [u64; EVTCHN_WORDS],
    pub wc_version: u32,
    pub wc_sec: u32,
    pub wc_nsec: u32,
    pub wc_sec_hi: u32,
}
pub type SharedInfo = SharedInfoOf<VcpuInfo, LEGACY_MAX_VCPUS>;

/// The arm64 forms of the structures above (`arch-arm.h`): no time or
/// per-architecture words in a vCPU's info (the guest reads the generic
/// timer), and one legacy vCPU slot in the shared info page.
pub mod arm64 {
    use super::VcpuTimeInfo;

    #[repr(C)]
    pub struct VcpuInfo {
        pub evtchn_upcall_pending: u8,
        pub evtchn_upcall_mask: u8,
        pub evtchn_pending_sel: u64,
        /// Not kept current on arm64.
        pub time: VcpuTimeInfo,
    }

    pub const LEGACY_MAX_VCPUS: usize = 1;
    pub type SharedInfo = super::SharedInfoOf<VcpuInfo, LEGACY_MAX_VCPUS>;

    /// The header of an arm64 Linux `Image`, the one kernel format libxl
    /// boots on arm64 (`Documentation/arm64/booting.rst`): the image is
    /// loaded at RAM base + `text_offset` and entered at its first byte.
    pub const IMAGE_MAGIC: u32 = 0x644d_5241;
    pub const IMAGE_MAGIC_OFFSET: usize = 0x38;
    pub const IMAGE_HEADER_BYTES: usize = 64;

    /// `hvc` immediate of a Xen hypercall; the number goes in x16.
    pub const HYPERCALL_IMM: u16 = 0xea1;

    const _: () = {
        assert!(core::mem::size_of::<VcpuInfo>() == 48);
        assert!(core::mem::offset_of!(SharedInfo, evtchn_pending) == 48);
        assert!(core::mem::offset_of!(SharedInfo, evtchn_mask) == 560);
        assert!(core::mem::offset_of!(SharedInfo, wc_version) == 1072);
    };
}

/// `grant_table.h`, version 1 entries.
pub const GTF_PERMIT_ACCESS: u16 = 1;
pub const GTF_READONLY: u16 = 1 << 2;
/// Set by Xen while the grantee has the page mapped.
pub const GTF_READING: u16 = 1 << 3;
pub const GTF_WRITING: u16 = 1 << 4;
pub const GNTTABOP_MAP_GRANT_REF: usize = 0;
pub const GNTTABOP_UNMAP_GRANT_REF: usize = 1;
pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
/// `gnttab_map_grant_ref`: maps a page another domain granted at
/// `host_addr` (for PVH, a guest-physical address).
#[repr(C)]
#[derive(Default)]
pub struct GnttabMapGrantRef {
    pub host_addr: u64,
    pub flags: u32,
    pub gref: u32,
    pub dom: u16,
    /// Out: 0 (`GNTST_okay`) or a negative `GNTST_*`.
    pub status: i16,
    /// Out.
    pub handle: u32,
    pub dev_bus_addr: u64,
}
#[repr(C)]
#[derive(Default)]
pub struct GnttabUnmapGrantRef {
    pub host_addr: u64,
    pub dev_bus_addr: u64,
    pub handle: u32,
    /// Out.
    pub status: i16,
}
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;
#[repr(C)]
pub struct GrantEntryV1 {
    pub flags: u16,
    pub domid: u16,
    pub frame: u32,
}

/// `io/console.h`.
#[repr(C)]
pub struct ConsoleInterface {
    pub input: [u8; 1024],
    pub output: [u8; 2048],
    pub in_cons: u32,
    pub in_prod: u32,
    pub out_cons: u32,
    pub out_prod: u32,
}

/// `io/xs_wire.h`.
pub const XENSTORE_RING_SIZE: usize = 1024;
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
#[repr(C)]
pub struct XenstoreInterface {
    pub req: [u8; XENSTORE_RING_SIZE],
    pub rsp: [u8; XENSTORE_RING_SIZE],
    pub req_cons: u32,
    pub req_prod: u32,
    pub rsp_cons: u32,
    pub rsp_prod: u32,
    pub server_features: u32,
    pub connection: u32,
    pub error: u32,
}
pub const XS_DIRECTORY: u32 = 1;
pub const XS_READ: u32 = 2;
pub const XS_WATCH: u32 = 4;
pub const XS_WRITE: u32 = 11;
pub const XS_RM: u32 = 13;
pub const XS_SET_PERMS: u32 = 14;
pub const XS_WATCH_EVENT: u32 = 15;
pub const XS_ERROR: u32 = 16;
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct XsHeader {
    pub kind: u32,
    pub req_id: u32,
    pub tx_id: u32,
    pub len: u32,
}

/// `io/ring.h` and `io/netif.h`: the shared ring header, then the entries.
#[repr(C)]
pub struct SringHeader {
    pub req_prod: u32,
    pub req_event: u32,
    pub rsp_prod: u32,
    pub rsp_event: u32,
    pub pvt: [u8; 4],
    pub pad: [u8; 44],
}
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NetifTxRequest {
    pub gref: u32,
    pub offset: u16,
    pub flags: u16,
    pub id: u16,
    pub size: u16,
}
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NetifTxResponse {
    pub id: u16,
    pub status: i16,
}
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NetifRxRequest {
    pub id: u16,
    pub pad: u16,
    pub gref: u32,
}
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NetifRxResponse {
    pub id: u16,
    pub offset: u16,
    pub flags: u16,
    pub status: i16,
}
/// Entries per page-sized ring: (4096 - 64) / entry size, rounded down to a power of two.
pub const NET_TX_RING_SIZE: usize = 256;
pub const NET_RX_RING_SIZE: usize = 256;
pub const NETRXF_MORE_DATA: u16 = 1 << 2;
pub const NETRXF_EXTRA_INFO: u16 = 1 << 3;

/// `io/xenbus.h`.
pub const XENBUS_STATE_CONNECTED: u32 = 4;
pub const XENBUS_STATE_CLOSING: u32 = 5;

const _: () = {
    use core::mem::size_of;
    assert!(size_of::<HvmStartInfo>() == 56);
    assert!(size_of::<HvmMemmapEntry>() == 24);
    assert!(size_of::<HvmParam>() == 16);
    assert!(size_of::<SchedPoll>() == 24);
    assert!(size_of::<AddToPhysmap>() == 24);
    assert!(size_of::<VcpuTimeInfo>() == 32);
    assert!(size_of::<VcpuInfo>() == 64);
    assert!(core::mem::offset_of!(SharedInfo, evtchn_pending) == 2048);
    assert!(size_of::<GrantEntryV1>() == 8);
    assert!(size_of::<GnttabMapGrantRef>() == 32);
    assert!(size_of::<GnttabUnmapGrantRef>() == 24);
    assert!(size_of::<EvtchnBindInterdomain>() == 12);
    assert!(size_of::<ConsoleInterface>() == 3088);
    assert!(size_of::<XenstoreInterface>() == 2076);
    assert!(size_of::<SringHeader>() == 64);
    assert!(size_of::<NetifTxRequest>() == 12);
    assert!(size_of::<NetifRxRequest>() == 8);
    assert!(size_of::<NetifRxResponse>() == 8);
};
