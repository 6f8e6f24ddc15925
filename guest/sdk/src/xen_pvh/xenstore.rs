//! A XenStore client over the domain's ring: one request at a time, which is
//! all a unikernel's start-up needs (reading its configuration, the netfront
//! handshake, its exit status). Watch events that arrive are counted, not
//! queued: a caller that watches re-reads what it watches.

use core::fmt;
use core::sync::atomic::{fence, AtomicPtr, AtomicU32, Ordering};

use super::{events, hvm_param};
use jitsu_xen_abi::defs::*;

static RING: AtomicPtr<XenstoreInterface> = AtomicPtr::new(core::ptr::null_mut());
static PORT: AtomicU32 = AtomicU32::new(0);
static NEXT_REQ: AtomicU32 = AtomicU32::new(1);

/// How long xenstored may take to answer before the request is given up.
const ANSWER_NANOS: u64 = 30_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    NotReady,
    /// xenstored answered with an error (`ENOENT`, `EACCES`, ...).
    Store([u8; 16], usize),
    /// The request does not fit in one message.
    TooLong,
    /// The answer does not fit the caller's buffer, or is not text.
    BadAnswer,
    Timeout,
}

impl Error {
    pub fn is_missing(&self) -> bool {
        matches!(self, Error::Store(name, len) if &name[..*len] == b"ENOENT")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotReady => f.write_str("no XenStore ring"),
            Error::Store(name, len) => {
                f.write_str(core::str::from_utf8(&name[..*len]).unwrap_or("error"))
            }
            Error::TooLong => f.write_str("request too long"),
            Error::BadAnswer => f.write_str("unexpected answer"),
            Error::Timeout => f.write_str("xenstored did not answer"),
        }
    }
}

pub fn init() -> Result<(), Error> {
    let pfn = hvm_param(HVM_PARAM_STORE_PFN).map_err(|_| Error::NotReady)?;
    let port = hvm_param(HVM_PARAM_STORE_EVTCHN).map_err(|_| Error::NotReady)?;
    if pfn == 0 {
        return Err(Error::NotReady);
    }
    PORT.store(port as u32, Ordering::Relaxed);
    RING.store((pfn << 12) as *mut XenstoreInterface, Ordering::Release);
    Ok(())
}

pub fn port() -> u32 {
    PORT.load(Ordering::Relaxed)
}

fn ring() -> Result<*mut XenstoreInterface, Error> {
    let ring = RING.load(Ordering::Acquire);
    if ring.is_null() {
        Err(Error::NotReady)
    } else {
        Ok(ring)
    }
}

/// Waits for the store's event channel, up to `deadline` (system time).
fn wait_until(deadline: u64) -> Result<(), Error> {
    let now = events::system_time_nanos();
    if now >= deadline {
        return Err(Error::Timeout);
    }
    events::wait(&[port()], deadline - now);
    events::take(port());
    Ok(())
}

// SAFETY (for the ring accessors below): the ring page is Xen's special
// XenStore page, identity mapped for the domain's life; xenstored moves
// req_cons and rsp_prod concurrently, so indices are read volatile with
// fences, and the guest writes only the bytes the indices hand it.

fn put(bytes: &[u8], deadline: u64) -> Result<(), Error> {
    let ring = ring()?;
    let mut sent = 0;
    while sent < bytes.len() {
        let (cons, prod) = unsafe {
            (
                core::ptr::read_volatile(core::ptr::addr_of!((*ring).req_cons)),
                core::ptr::read_volatile(core::ptr::addr_of!((*ring).req_prod)),
            )
        };
        fence(Ordering::Acquire);
        let free = XENSTORE_RING_SIZE - (prod.wrapping_sub(cons) as usize).min(XENSTORE_RING_SIZE);
        if free == 0 {
            wait_until(deadline)?;
            continue;
        }
        let n = free.min(bytes.len() - sent);
        for i in 0..n {
            let at = prod.wrapping_add(i as u32) as usize % XENSTORE_RING_SIZE;
            unsafe { core::ptr::addr_of_mut!((*ring).req[at]).write_volatile(bytes[sent + i]) };
        }
        fence(Ordering::Release);
        unsafe {
            core::ptr::addr_of_mut!((*ring).req_prod).write_volatile(prod.wrapping_add(n as u32))
        };
        events::notify(port());
        sent += n;
    }
    Ok(())
}

fn get(out: &mut [u8], deadline: u64) -> Result<(), Error> {
    let ring = ring()?;
    let mut got = 0;
    while got < out.len() {
        let (cons, prod) = unsafe {
            (
                core::ptr::read_volatile(core::ptr::addr_of!((*ring).rsp_cons)),
                core::ptr::read_volatile(core::ptr::addr_of!((*ring).rsp_prod)),
            )
        };
        fence(Ordering::Acquire);
        let avail = (prod.wrapping_sub(cons) as usize).min(XENSTORE_RING_SIZE);
        if avail == 0 {
            wait_until(deadline)?;
            continue;
        }
        let n = avail.min(out.len() - got);
        for i in 0..n {
            let at = cons.wrapping_add(i as u32) as usize % XENSTORE_RING_SIZE;
            out[got + i] = unsafe { core::ptr::addr_of!((*ring).rsp[at]).read_volatile() };
        }
        fence(Ordering::Release);
        unsafe {
            core::ptr::addr_of_mut!((*ring).rsp_cons).write_volatile(cons.wrapping_add(n as u32))
        };
        events::notify(port());
        got += n;
    }
    Ok(())
}

/// Sends one request made of `parts` (concatenated) and copies the answer's
/// payload into `answer`; returns its length.
fn request(kind: u32, parts: &[&[u8]], answer: &mut [u8]) -> Result<usize, Error> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > XENSTORE_PAYLOAD_MAX {
        return Err(Error::TooLong);
    }
    let req_id = NEXT_REQ.fetch_add(1, Ordering::Relaxed);
    let header = XsHeader {
        kind,
        req_id,
        tx_id: 0,
        len: len as u32,
    };
    let deadline = events::system_time_nanos() + ANSWER_NANOS;
    put(as_bytes(&header), deadline)?;
    for part in parts {
        put(part, deadline)?;
    }
    loop {
        let mut header = XsHeader::default();
        get(as_bytes_mut(&mut header), deadline)?;
        let len = header.len as usize;
        if len > XENSTORE_PAYLOAD_MAX {
            return Err(Error::BadAnswer);
        }
        if header.req_id != req_id || header.kind == XS_WATCH_EVENT {
            // A watch event (or a stale answer): read it past.
            let mut skip = [0u8; 64];
            let mut left = len;
            while left > 0 {
                let n = left.min(skip.len());
                get(&mut skip[..n], deadline)?;
                left -= n;
            }
            continue;
        }
        if header.kind == XS_ERROR {
            let mut name = [0u8; 16];
            let n = len.min(name.len());
            get(&mut name[..n], deadline)?;
            let mut rest = [0u8; 1];
            for _ in n..len {
                get(&mut rest, deadline)?;
            }
            let end = name[..n].iter().position(|&b| b == 0).unwrap_or(n);
            return Err(Error::Store(name, end));
        }
        if len > answer.len() {
            return Err(Error::BadAnswer);
        }
        get(&mut answer[..len], deadline)?;
        return Ok(len);
    }
}

fn as_bytes(header: &XsHeader) -> &[u8] {
    // SAFETY: XsHeader is four u32s, repr(C), with no padding.
    unsafe { core::slice::from_raw_parts(header as *const XsHeader as *const u8, 16) }
}

fn as_bytes_mut(header: &mut XsHeader) -> &mut [u8] {
    // SAFETY: as above; every bit pattern is a valid XsHeader.
    unsafe { core::slice::from_raw_parts_mut(header as *mut XsHeader as *mut u8, 16) }
}

/// Reads `path` (relative paths are under this domain's home) into `buf`.
pub fn read<'a>(path: &str, buf: &'a mut [u8]) -> Result<&'a str, Error> {
    let n = request(XS_READ, &[path.as_bytes(), b"\0"], buf)?;
    core::str::from_utf8(&buf[..n]).map_err(|_| Error::BadAnswer)
}

pub fn write(path: &str, value: &str) -> Result<(), Error> {
    let mut ok = [0u8; 8];
    request(
        XS_WRITE,
        &[path.as_bytes(), b"\0", value.as_bytes()],
        &mut ok,
    )
    .map(|_| ())
}

/// The names of `path`'s children, read into `buf`.
pub fn directory<'a>(
    path: &str,
    buf: &'a mut [u8],
) -> Result<impl Iterator<Item = &'a str>, Error> {
    let n = request(XS_DIRECTORY, &[path.as_bytes(), b"\0"], buf)?;
    let names = core::str::from_utf8(&buf[..n]).map_err(|_| Error::BadAnswer)?;
    Ok(names.split('\0').filter(|name| !name.is_empty()))
}

/// Removes `path` and everything below it (a missing one is not an error).
pub fn rm(path: &str) -> Result<(), Error> {
    let mut ok = [0u8; 8];
    match request(XS_RM, &[path.as_bytes(), b"\0"], &mut ok) {
        Err(e) if e.is_missing() => Ok(()),
        other => other.map(|_| ()),
    }
}

/// Sets `path`'s permissions: `owner` may do anything, everyone else
/// nothing, and `reader` may read.
pub fn share_with(path: &str, owner: u16, reader: u16) -> Result<(), Error> {
    let mut own = Text::<8>::new();
    let mut read = Text::<8>::new();
    let _ = fmt::Write::write_fmt(&mut own, format_args!("n{owner}"));
    let _ = fmt::Write::write_fmt(&mut read, format_args!("r{reader}"));
    let mut ok = [0u8; 8];
    request(
        XS_SET_PERMS,
        &[
            path.as_bytes(),
            b"\0",
            own.as_str().as_bytes(),
            b"\0",
            read.as_str().as_bytes(),
            b"\0",
        ],
        &mut ok,
    )
    .map(|_| ())
}

/// Asks to be told (through the store's event channel) when `path` changes.
pub fn watch(path: &str, token: &str) -> Result<(), Error> {
    let mut ok = [0u8; 8];
    request(
        XS_WATCH,
        &[path.as_bytes(), b"\0", token.as_bytes(), b"\0"],
        &mut ok,
    )
    .map(|_| ())
}

/// Waits until the store has something to say (a watch event) or
/// `timeout_nanos` passed.
pub fn wait_for_event(timeout_nanos: u64) {
    events::wait(&[port()], timeout_nanos);
    events::take(port());
}

/// Formats into a stack buffer: paths and values are short.
pub struct Text<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Text<N> {
    pub fn new() -> Self {
        Text {
            buf: [0; N],
            len: 0,
        }
    }

    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl<const N: usize> fmt::Write for Text<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > N {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// `format!` into a [`Text`] of 128 bytes.
#[macro_export]
#[doc(hidden)]
macro_rules! xs_path {
    ($($arg:tt)*) => {{
        let mut text = $crate::platform::xenstore::Text::<128>::new();
        let _ = core::fmt::Write::write_fmt(&mut text, format_args!($($arg)*));
        text
    }};
}
