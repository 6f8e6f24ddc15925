//! Writing responses into a fixed buffer.

use core::fmt::{self, Write};

/// The largest response we write; a request is only taken on when the
/// socket's send buffer has this much room, so a response is never cut.
pub const MAX_RESPONSE: usize = 1024;

/// A `fmt::Write` over a byte array.
pub struct Buf {
    bytes: [u8; MAX_RESPONSE],
    len: usize,
}

impl Buf {
    pub fn new() -> Buf {
        Buf {
            bytes: [0; MAX_RESPONSE],
            len: 0,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Write for Buf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let dest = self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?;
        dest.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

pub struct Status {
    pub code: u16,
    pub reason: &'static str,
}

pub const OK: Status = Status {
    code: 200,
    reason: "OK",
};
pub const BAD_REQUEST: Status = Status {
    code: 400,
    reason: "Bad Request",
};
pub const NOT_FOUND: Status = Status {
    code: 404,
    reason: "Not Found",
};
pub const METHOD_NOT_ALLOWED: Status = Status {
    code: 405,
    reason: "Method Not Allowed",
};

/// What the page says about the unikernel.
pub struct PageInfo<'a> {
    pub name: &'a str,
    pub uptime_millis: u64,
    pub served: u64,
    /// The visit number from the counter unikernel, if one is asked.
    pub visits: Option<crate::visits::Count>,
}

/// Writes a complete response. `body` is left out for HEAD.
pub fn write(
    out: &mut Buf,
    status: &Status,
    close: bool,
    head_only: bool,
    body: &dyn Fn(&mut Buf) -> fmt::Result,
) -> fmt::Result {
    let mut content = Buf::new();
    body(&mut content)?;
    write!(
        out,
        "HTTP/1.1 {} {}\r\nServer: jitsu-hello-http\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        status.code,
        status.reason,
        content.len,
        if close { "close" } else { "keep-alive" },
    )?;
    if !head_only {
        out.write_str(core::str::from_utf8(content.as_bytes()).map_err(|_| fmt::Error)?)?;
    }
    Ok(())
}

pub fn page(out: &mut Buf, info: &PageInfo) -> fmt::Result {
    write!(
        out,
        "<!doctype html>\n<title>{name}</title>\n<h1>Hello from {name}</h1>\n\
         <p>A Jitsu unikernel.</p>\n<p>Uptime: {}.{:03} s</p>\n<p>Requests served: {}</p>\n",
        info.uptime_millis / 1000,
        info.uptime_millis % 1000,
        info.served,
        name = info.name,
    )?;
    match info.visits {
        Some(crate::visits::Count::Number(n)) => {
            writeln!(
                out,
                "<p>Visit number {n}, counted by another unikernel over Conduit.</p>"
            )
        }
        Some(crate::visits::Count::Unavailable(why)) => {
            writeln!(out, "<p>Visits: unknown ({why}).</p>")
        }
        None => Ok(()),
    }
}

pub fn message(out: &mut Buf, status: &Status) -> fmt::Result {
    writeln!(
        out,
        "<!doctype html>\n<title>{0} {1}</title>\n<h1>{0} {1}</h1>",
        status.code, status.reason
    )
}
