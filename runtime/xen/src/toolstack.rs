//! The toolstack: libxl, libxenstore and libxenctrl through the C glue in
//! `glue/toolstack.c`. This file is the only one that calls C; each call
//! says why it is sound.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::os::fd::{BorrowedFd, RawFd};
use std::ptr::NonNull;

use thiserror::Error;

#[repr(C)]
struct Jx {
    _private: [u8; 0],
}

#[repr(C)]
struct JxSpec {
    name: *const c_char,
    kernel: *const c_char,
    ramdisk: *const c_char,
    cmdline: *const c_char,
    memory_kib: u64,
    vcpus: u32,
    bridge: *const c_char,
    mac: [u8; 6],
}

#[repr(C)]
#[derive(Default)]
struct JxState {
    exists: c_int,
    shutdown: c_int,
    dying: c_int,
    paused: c_int,
    reason: c_int,
}

/// A vCPU's registers when the domain ended.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct Registers {
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub rax: u64,
}

extern "C" {
    fn jx_open(level: c_int) -> *mut Jx;
    fn jx_close(jx: *mut Jx);
    fn jx_create_paused(jx: *mut Jx, spec: *const JxSpec, domid: *mut u32) -> c_int;
    fn jx_unpause(jx: *mut Jx, domid: u32) -> c_int;
    fn jx_pause(jx: *mut Jx, domid: u32) -> c_int;
    fn jx_destroy(jx: *mut Jx, domid: u32) -> c_int;
    fn jx_domid_by_name(jx: *mut Jx, name: *const c_char, domid: *mut u32) -> c_int;
    fn jx_state(jx: *mut Jx, domid: u32, out: *mut JxState) -> c_int;
    fn jx_console_tty(jx: *mut Jx, domid: u32) -> *mut c_char;
    fn jx_xs_write(jx: *mut Jx, path: *const c_char, value: *const c_char) -> c_int;
    fn jx_xs_read(jx: *mut Jx, path: *const c_char) -> *mut c_char;
    fn jx_watch(jx: *mut Jx, path: *const c_char) -> c_int;
    fn jx_unwatch(jx: *mut Jx, path: *const c_char) -> c_int;
    fn jx_watch_fd(jx: *mut Jx) -> c_int;
    fn jx_watch_drain(jx: *mut Jx);
    fn jx_vcpu_regs(jx: *mut Jx, domid: u32, out: *mut Registers) -> c_int;
    fn jx_free(p: *mut c_void);
}

#[derive(Debug, Error)]
pub enum ToolstackError {
    #[error("cannot open the Xen toolstack (is this a Xen dom0, with xenstored running?): {0}")]
    Open(std::io::Error),
    #[error("{what}: libxl error {code} (libxl's own message is above)")]
    Libxl { what: &'static str, code: i32 },
    #[error("XenStore {path}: {err}")]
    Store { path: String, err: std::io::Error },
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
}

/// How a domain stands, as Xen tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    Gone,
    Running {
        paused: bool,
    },
    /// Shut down with this reason (`SHUTDOWN_*`: 0 poweroff, 1 reboot,
    /// 3 crash, 4 watchdog, ...), not yet destroyed.
    Shutdown {
        reason: i32,
    },
    Dying,
}

/// What a domain is built from.
pub struct DomainSpec<'a> {
    pub name: &'a str,
    pub kernel: &'a std::path::Path,
    pub ramdisk: Option<&'a std::path::Path>,
    pub cmdline: &'a str,
    pub memory_kib: u64,
    pub vcpus: u32,
    /// The bridge for the domain's one vif, and the vif's MAC.
    pub vif: Option<(&'a str, [u8; 6])>,
}

/// One connection to libxl, XenStore and the hypervisor.
pub struct Toolstack {
    jx: NonNull<Jx>,
    /// Whether the `@releaseDomain` watch is set (once per handle).
    watching_domains: std::cell::Cell<bool>,
}

// SAFETY: the handles inside are used from one thread at a time (Toolstack
// is not Sync), and libxl contexts may move between threads.
unsafe impl Send for Toolstack {}

fn cstring(s: &str, what: &'static str) -> Result<CString, ToolstackError> {
    CString::new(s).map_err(|_| ToolstackError::Nul(what))
}

fn path_cstring(p: &std::path::Path, what: &'static str) -> Result<CString, ToolstackError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| ToolstackError::Nul(what))
}

/// Takes a malloc'd string from the glue.
fn take_string(p: *mut c_char) -> Option<String> {
    let p = NonNull::new(p)?;
    // SAFETY: the glue returns NUL-terminated strings from malloc, which we
    // own; they are read once and freed with the glue's free.
    unsafe {
        let s = CStr::from_ptr(p.as_ptr()).to_string_lossy().into_owned();
        jx_free(p.as_ptr().cast());
        Some(s)
    }
}

fn check(code: c_int, what: &'static str) -> Result<(), ToolstackError> {
    if code == 0 {
        Ok(())
    } else {
        Err(ToolstackError::Libxl { what, code })
    }
}

impl Toolstack {
    /// `verbosity`: 0 errors, 1 progress, 2 debug (libxl's log, on stderr).
    pub fn open(verbosity: u8) -> Result<Toolstack, ToolstackError> {
        // SAFETY: jx_open allocates everything it returns, or returns NULL
        // with errno set.
        let jx = unsafe { jx_open(verbosity as c_int) };
        NonNull::new(jx)
            .map(|jx| Toolstack {
                jx,
                watching_domains: std::cell::Cell::new(false),
            })
            .ok_or_else(|| ToolstackError::Open(std::io::Error::last_os_error()))
    }

    fn raw(&self) -> *mut Jx {
        self.jx.as_ptr()
    }

    /// Builds the domain, paused; returns its id. On failure libxl has
    /// removed what it made.
    pub fn create_paused(&self, spec: &DomainSpec) -> Result<u32, ToolstackError> {
        let name = cstring(spec.name, "the domain name")?;
        let kernel = path_cstring(spec.kernel, "the kernel path")?;
        let ramdisk = spec
            .ramdisk
            .map(|p| path_cstring(p, "the initrd path"))
            .transpose()?;
        let cmdline = cstring(spec.cmdline, "the command line")?;
        let bridge = spec
            .vif
            .map(|(b, _)| cstring(b, "the bridge name"))
            .transpose()?;
        let raw = JxSpec {
            name: name.as_ptr(),
            kernel: kernel.as_ptr(),
            ramdisk: ramdisk.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            cmdline: cmdline.as_ptr(),
            memory_kib: spec.memory_kib,
            vcpus: spec.vcpus,
            bridge: bridge.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            mac: spec.vif.map_or([0; 6], |(_, mac)| mac),
        };
        let mut domid = 0u32;
        // SAFETY: every pointer in `raw` names a CString that outlives the
        // call; the glue copies what it keeps.
        let rc = unsafe { jx_create_paused(self.raw(), &raw, &mut domid) };
        check(rc, "creating the domain")?;
        Ok(domid)
    }

    pub fn unpause(&self, domid: u32) -> Result<(), ToolstackError> {
        // SAFETY: a plain call on our own context.
        check(
            unsafe { jx_unpause(self.raw(), domid) },
            "unpausing the domain",
        )
    }

    pub fn pause(&self, domid: u32) -> Result<(), ToolstackError> {
        // SAFETY: a plain call on our own context.
        check(unsafe { jx_pause(self.raw(), domid) }, "pausing the domain")
    }

    /// Destroys the domain and its devices.
    pub fn destroy(&self, domid: u32) -> Result<(), ToolstackError> {
        // SAFETY: a plain call on our own context.
        check(
            unsafe { jx_destroy(self.raw(), domid) },
            "destroying the domain",
        )
    }

    /// The id of the domain named `name`, if there is one.
    pub fn domid_by_name(&self, name: &str) -> Result<Option<u32>, ToolstackError> {
        let name = cstring(name, "the domain name")?;
        let mut domid = 0u32;
        // SAFETY: the name outlives the call; `domid` is a live out-parameter.
        let rc = unsafe { jx_domid_by_name(self.raw(), name.as_ptr(), &mut domid) };
        Ok((rc == 0).then_some(domid))
    }

    pub fn state(&self, domid: u32) -> Result<DomainState, ToolstackError> {
        let mut state = JxState::default();
        // SAFETY: `state` is a live out-parameter of the glue's layout.
        check(
            unsafe { jx_state(self.raw(), domid, &mut state) },
            "reading the domain's state",
        )?;
        Ok(match state {
            JxState { exists: 0, .. } => DomainState::Gone,
            JxState { dying: d, .. } if d != 0 => DomainState::Dying,
            JxState {
                shutdown: s,
                reason,
                ..
            } if s != 0 => DomainState::Shutdown { reason },
            JxState { paused, .. } => DomainState::Running {
                paused: paused != 0,
            },
        })
    }

    /// The pty of the domain's console (served by xenconsoled).
    pub fn console_tty(&self, domid: u32) -> Option<String> {
        // SAFETY: a plain call; the result is taken by `take_string`.
        take_string(unsafe { jx_console_tty(self.raw(), domid) })
    }

    pub fn write(&self, path: &str, value: &str) -> Result<(), ToolstackError> {
        let p = cstring(path, "a XenStore path")?;
        let v = cstring(value, "a XenStore value")?;
        // SAFETY: both strings outlive the call.
        if unsafe { jx_xs_write(self.raw(), p.as_ptr(), v.as_ptr()) } == 0 {
            Ok(())
        } else {
            Err(ToolstackError::Store {
                path: path.into(),
                err: std::io::Error::last_os_error(),
            })
        }
    }

    pub fn read(&self, path: &str) -> Option<String> {
        let p = cstring(path, "a XenStore path").ok()?;
        // SAFETY: the path outlives the call; the result is taken once.
        take_string(unsafe { jx_xs_read(self.raw(), p.as_ptr()) })
    }

    /// A descriptor, readable when any domain shuts down or dies (or
    /// another of this handle's watches fires).
    pub fn watch_domains(&self) -> Result<BorrowedFd<'_>, ToolstackError> {
        if self.watching_domains.get() {
            return self.watch_fd();
        }
        let fd = self.watch("@releaseDomain")?;
        self.watching_domains.set(true);
        Ok(fd)
    }

    /// Watches `path`; the descriptor becomes readable when any of this
    /// handle's watches fires (then read the paths again).
    pub fn watch(&self, path: &str) -> Result<BorrowedFd<'_>, ToolstackError> {
        let p = cstring(path, "a XenStore path")?;
        // SAFETY: the path outlives the call.
        let fd: RawFd = unsafe { jx_watch(self.raw(), p.as_ptr()) };
        if fd < 0 {
            return Err(ToolstackError::Store {
                path: path.into(),
                err: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: the fd belongs to the XenStore handle, which lives as long
        // as `self`, and the borrow cannot outlive `self`.
        Ok(unsafe { BorrowedFd::borrow_raw(fd) })
    }

    pub fn unwatch(&self, path: &str) -> Result<(), ToolstackError> {
        let p = cstring(path, "a XenStore path")?;
        // SAFETY: the path outlives the call.
        if unsafe { jx_unwatch(self.raw(), p.as_ptr()) } == 0 {
            Ok(())
        } else {
            Err(ToolstackError::Store {
                path: path.into(),
                err: std::io::Error::last_os_error(),
            })
        }
    }

    /// The descriptor of the watches set so far.
    fn watch_fd(&self) -> Result<BorrowedFd<'_>, ToolstackError> {
        // SAFETY: a plain call on our own XenStore handle.
        let fd: RawFd = unsafe { jx_watch_fd(self.raw()) };
        if fd < 0 {
            return Err(ToolstackError::Store {
                path: "(watches)".into(),
                err: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: as in `watch`.
        Ok(unsafe { BorrowedFd::borrow_raw(fd) })
    }

    /// Reads past the watch events that woke us.
    pub fn drain_watch(&self) {
        // SAFETY: a plain call on our own XenStore handle.
        unsafe { jx_watch_drain(self.raw()) }
    }

    /// vCPU 0's registers (for a crashed domain that was kept).
    pub fn registers(&self, domid: u32) -> Option<Registers> {
        let mut regs = Registers::default();
        // SAFETY: `regs` is a live out-parameter of the glue's layout.
        (unsafe { jx_vcpu_regs(self.raw(), domid, &mut regs) } == 0).then_some(regs)
    }
}

impl Drop for Toolstack {
    fn drop(&mut self) {
        // SAFETY: the handle came from jx_open and is closed once.
        unsafe { jx_close(self.raw()) }
    }
}
