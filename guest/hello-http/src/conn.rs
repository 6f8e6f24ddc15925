//! Connections: one listening smoltcp socket per connection slot, a request
//! buffer per slot, keep-alive, and a bounded idle time.

use jitsu_sdk::heap;
use jitsu_sdk::smoltcp::iface::{SocketHandle, SocketSet};
use jitsu_sdk::smoltcp::socket::tcp::{self, State};
use jitsu_sdk::smoltcp::time::{Duration, Instant};

use jitsu_sdk::conduit::Conduit;

use crate::response::{self, Buf, PageInfo, Status, MAX_RESPONSE};
use crate::visits::{Count, Visits};

/// The longest request head (request line + headers) we accept.
const REQUEST_MAX: usize = 4096;
const RX_BUFFER: usize = 4096;
const TX_BUFFER: usize = 8192;
const HEADERS_MAX: usize = 32;
/// A connection with no traffic for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

struct Conn {
    handle: SocketHandle,
    request: &'static mut [u8],
    len: usize,
    /// Body bytes of the last request still to be read and dropped.
    skip: u64,
    closing: bool,
    last_active: Instant,
    /// The visit number for the request at the head of the buffer.
    visit: Visit,
}

#[derive(Clone, Copy)]
enum Visit {
    NotAsked,
    Asked,
    Got(Count),
}

impl Conn {
    fn reset(&mut self, now: Instant) {
        self.len = 0;
        self.skip = 0;
        self.closing = false;
        self.last_active = now;
        // An answer still on its way finds the connection gone (see `serve`).
        self.visit = Visit::NotAsked;
    }
}

pub struct Server {
    conns: &'static mut [Conn],
    port: u16,
    name: &'static str,
    served: u64,
    visits: Option<Visits>,
}

/// What one parsed request asks for.
struct Request {
    head_len: usize,
    body_len: u64,
    head_only: bool,
    close: bool,
    status: Status,
}

impl Server {
    pub fn new(
        sockets: &mut SocketSet<'static>,
        n: usize,
        port: u16,
        name: &'static str,
    ) -> Option<Server> {
        let mut failed = false;
        let conns = heap::array(n, |_| {
            let (rx, tx, request) = match (
                heap::bytes(RX_BUFFER),
                heap::bytes(TX_BUFFER),
                heap::bytes(REQUEST_MAX),
            ) {
                (Some(rx), Some(tx), Some(request)) => (rx, tx, request),
                _ => {
                    failed = true;
                    (&mut [][..], &mut [][..], &mut [][..])
                }
            };
            let mut socket =
                tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
            let _ = socket.listen(port);
            Conn {
                handle: sockets.add(socket),
                request,
                len: 0,
                skip: 0,
                closing: false,
                last_active: Instant::ZERO,
                visit: Visit::NotAsked,
            }
        })?;
        // Page names are for people: keep them short enough for one response.
        let name = &name[..name.len().min(64)];
        (!failed).then_some(Server {
            conns,
            port,
            name,
            served: 0,
            visits: None,
        })
    }

    /// Pages show their visit number, asked of `counter` over Conduit.
    pub fn count_visits(&mut self, counter: &'static str) -> bool {
        self.visits = Visits::new(counter);
        self.visits.is_some()
    }

    /// Serves every connection once; returns when to be called again for
    /// the nearest idle deadline.
    pub fn serve(
        &mut self,
        sockets: &mut SocketSet<'static>,
        mut conduit: Option<&mut Conduit>,
        now: Instant,
    ) -> Option<Duration> {
        let mut wake: Option<Duration> = None;
        if let (Some(visits), Some(conduit)) = (self.visits.as_mut(), conduit.as_deref_mut()) {
            let conns = &mut *self.conns;
            visits.exchange(conduit, |i, count| {
                // A connection reset meanwhile asked nothing any more.
                if let Some(conn) = conns.get_mut(i).filter(|c| matches!(c.visit, Visit::Asked)) {
                    conn.visit = Visit::Got(count);
                }
            });
        }
        for i in 0..self.conns.len() {
            let handle = self.conns[i].handle;
            let socket = sockets.get_mut::<tcp::Socket>(handle);
            self.step(i, socket, conduit.as_deref_mut(), now);
            let conn = &self.conns[i];
            if socket.is_active() {
                let left = (conn.last_active + IDLE_TIMEOUT) - now;
                wake = Some(wake.map_or(left, |w| w.min(left)));
            }
        }
        wake
    }

    fn step(
        &mut self,
        i: usize,
        socket: &mut tcp::Socket,
        mut conduit: Option<&mut Conduit>,
        now: Instant,
    ) {
        if !socket.is_open() {
            self.conns[i].reset(now);
            let _ = socket.listen(self.port);
            return;
        }
        if matches!(socket.state(), State::Listen | State::SynReceived) {
            self.conns[i].last_active = now;
            return;
        }
        let conn = &mut self.conns[i];
        if now - conn.last_active >= IDLE_TIMEOUT {
            // Idle too long, or a peer that stopped reading mid-close.
            if conn.closing {
                socket.abort()
            } else {
                socket.close()
            }
            conn.closing = true;
            conn.last_active = now;
            return;
        }
        if conn.closing {
            return;
        }
        if read(conn, socket) {
            conn.last_active = now;
        }
        while self.conns[i].len > 0 && !self.conns[i].closing {
            if socket.send_capacity() - socket.send_queue() < MAX_RESPONSE {
                break; // the client is not reading; wait for room
            }
            if !self.answer(i, socket, conduit.as_deref_mut(), now) {
                break;
            }
        }
        let conn = &mut self.conns[i];
        if !conn.closing && socket.state() == State::CloseWait && !socket.can_recv() {
            socket.close();
            conn.closing = true;
        }
    }

    /// Answers the request at the head of the buffer, if it is complete.
    fn answer(
        &mut self,
        i: usize,
        socket: &mut tcp::Socket,
        conduit: Option<&mut Conduit>,
        now: Instant,
    ) -> bool {
        let conn = &mut self.conns[i];
        let request = match parse(&conn.request[..conn.len]) {
            Some(Ok(request)) => request,
            Some(Err(())) => bad_request(),
            None if conn.len == conn.request.len() => bad_request(), // head too long
            None => return false,
        };
        let visits = match (&mut self.visits, conduit, request.status.code) {
            (Some(visits), Some(conduit), 200) => match conn.visit {
                Visit::NotAsked if visits.ask(conduit, i) => {
                    conn.visit = Visit::Asked;
                    return false;
                }
                Visit::NotAsked => Some(Count::Unavailable("the counter cannot be asked")),
                Visit::Asked => return false,
                Visit::Got(count) => Some(count),
            },
            _ => None,
        };
        conn.visit = Visit::NotAsked;
        self.served += 1;
        let info = PageInfo {
            name: self.name,
            uptime_millis: now.total_millis() as u64,
            served: self.served,
            visits,
        };
        let mut out = Buf::new();
        let written = if request.status.code == 200 {
            response::write(
                &mut out,
                &request.status,
                request.close,
                request.head_only,
                &|b| response::page(b, &info),
            )
        } else {
            let status = &request.status;
            response::write(&mut out, status, request.close, request.head_only, &|b| {
                response::message(b, status)
            })
        };
        let conn = &mut self.conns[i];
        if written.is_err() || socket.send_slice(out.as_bytes()) != Ok(out.as_bytes().len()) {
            socket.abort();
            conn.closing = true;
            return false;
        }
        if request.close {
            socket.close();
            conn.closing = true;
            return false;
        }
        // Drop the head and whatever of the body is already buffered.
        let body_here = (request.body_len).min((conn.len - request.head_len) as u64) as usize;
        let consumed = request.head_len + body_here;
        conn.request.copy_within(consumed..conn.len, 0);
        conn.len -= consumed;
        conn.skip = request.body_len - body_here as u64;
        true
    }
}

/// Moves what the socket has into the request buffer, dropping body bytes
/// still owed by the previous request. Returns whether anything was read.
fn read(conn: &mut Conn, socket: &mut tcp::Socket) -> bool {
    let mut any = false;
    while socket.can_recv() {
        if conn.skip > 0 {
            let skip = conn.skip;
            let dropped = socket
                .recv(|bytes| {
                    let n = (bytes.len() as u64).min(skip) as usize;
                    (n, n)
                })
                .unwrap_or(0);
            conn.skip -= dropped as u64;
            any |= dropped > 0;
            if dropped == 0 {
                break;
            }
            continue;
        }
        match socket.recv_slice(&mut conn.request[conn.len..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                conn.len += n;
                any = true;
            }
        }
    }
    any
}

fn bad_request() -> Request {
    Request {
        head_len: 0,
        body_len: 0,
        head_only: false,
        close: true,
        status: response::BAD_REQUEST,
    }
}

/// `None`: the head is not complete yet. `Some(Err)`: malformed.
fn parse(bytes: &[u8]) -> Option<Result<Request, ()>> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return None,
        Err(_) => return Some(Err(())),
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Some(Err(()));
    };
    let mut close = version == 0;
    let mut body_len: Option<u64> = None;
    let mut host = false;
    for header in req.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let Some(len) = core::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            else {
                return Some(Err(()));
            };
            if body_len.is_some_and(|prev| prev != len) {
                return Some(Err(()));
            }
            body_len = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked bodies are not for a page server; refuse rather than misframe.
            return Some(Err(()));
        } else if name.eq_ignore_ascii_case("host") {
            host = true;
        }
    }
    if version == 1 && !host {
        return Some(Err(()));
    }
    let head_only = method == "HEAD";
    let status = match (method, path) {
        ("GET" | "HEAD", "/") => response::OK,
        ("GET" | "HEAD", p) if p.starts_with("/?") => response::OK,
        ("GET" | "HEAD", _) => response::NOT_FOUND,
        _ => response::METHOD_NOT_ALLOWED,
    };
    Some(Ok(Request {
        head_len,
        body_len: body_len.unwrap_or(0),
        head_only,
        close,
        status,
    }))
}
