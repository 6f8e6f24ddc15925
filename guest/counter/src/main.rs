//! counter: counts for other unikernels. Every stream a client opens to
//! its Conduit name, and every TCP connection to port 9000, is a session
//! of lines (`session.rs`); the count is shared by all of them. Over
//! Conduit it is the other half of hello-http's visit counter, and over
//! both it is what the benchmarks measure round trips and throughput
//! against. Its command line may say `spin=MICROSECONDS`: how long its
//! event loop watches the rings after traffic (see `Conduit::set_spin`).

#![no_std]
#![no_main]

mod session;

use jitsu_sdk::conduit::{Conduit, Stream, StreamError};
use jitsu_sdk::net::Stack;
use jitsu_sdk::smoltcp::iface::{SocketHandle, SocketSet};
use jitsu_sdk::smoltcp::socket::tcp;
use jitsu_sdk::{heap, println, Boot};

use session::Session;

jitsu_sdk::entry!(main);

const TCP_PORT: u16 = 9000;
const TCP_SESSIONS: usize = 8;
const CONDUIT_SESSIONS: usize = jitsu_sdk::abi::conduit::SLOTS as usize;
const TCP_BUFFER: usize = 64 * 1024;
/// What one read takes from a stream or socket.
const CHUNK: usize = 64 * 1024;

struct Counter {
    count: u64,
    /// A session for every channel slot, made once (the heap never frees).
    streams: &'static mut [(Option<Stream>, Session)],
    tcp: &'static mut [(SocketHandle, Session)],
    scratch: &'static mut [u8],
}

fn main(boot: &Boot) -> i32 {
    let mut conduit = match Conduit::new(boot) {
        Ok(conduit) => conduit,
        Err(e) => {
            println!("counter: {e}");
            return 1;
        }
    };
    if let Some(spin) = spin_option(boot) {
        conduit.set_spin(spin);
    }
    let name = conduit.name();
    if let Err(e) = conduit.listen(name) {
        println!("counter: listen {name}: {e}");
        return 1;
    }
    let mut stack = match Stack::new(boot, TCP_SESSIONS) {
        Ok(stack) => stack,
        Err(e) => {
            println!("counter: {e}");
            return 1;
        }
    };
    let Some(mut counter) = Counter::new(&mut stack.sockets) else {
        println!("counter: out of memory");
        return 1;
    };
    println!("counter: listening as {name} over Conduit and on TCP port {TCP_PORT}");
    stack.run_with(&mut conduit, |sockets, conduit, _now| {
        counter.serve_conduit(conduit);
        counter.serve_tcp(sockets);
        None
    })
}

/// `spin=MICROSECONDS` on the command line.
fn spin_option(boot: &Boot) -> Option<jitsu_sdk::smoltcp::time::Duration> {
    boot.cmdline()
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("spin=")?.parse().ok())
        .map(jitsu_sdk::smoltcp::time::Duration::from_micros)
}

impl Counter {
    fn new(sockets: &mut SocketSet<'static>) -> Option<Counter> {
        let mut failed = false;
        let mut session = || {
            Session::new().unwrap_or_else(|| {
                failed = true;
                Session::empty()
            })
        };
        let streams = heap::array(CONDUIT_SESSIONS, |_| (None, session()))?;
        let mut no_buffers = false;
        let tcp = heap::array(TCP_SESSIONS, |_| {
            let mut buffer = || {
                heap::bytes(TCP_BUFFER).unwrap_or_else(|| {
                    no_buffers = true;
                    &mut []
                })
            };
            let (rx, tx) = (buffer(), buffer());
            let mut socket =
                tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
            let _ = socket.listen(TCP_PORT);
            (sockets.add(socket), session())
        })?;
        let scratch = heap::bytes(CHUNK)?;
        (!failed && !no_buffers).then_some(Counter {
            count: 0,
            streams,
            tcp,
            scratch,
        })
    }

    fn serve_conduit(&mut self, conduit: &mut Conduit) {
        while let Some(stream) = conduit.accept() {
            match self.streams.iter_mut().find(|(s, _)| s.is_none()) {
                Some(entry) => {
                    entry.1.reset();
                    entry.0 = Some(stream);
                    println!("counter: {} connected", conduit.peer(stream));
                }
                None => conduit.close(stream),
            }
        }
        for (entry, session) in self.streams.iter_mut() {
            let Some(stream) = *entry else { continue };
            let mut transport = OverConduit { conduit, stream };
            let done = converse(session, &mut self.count, self.scratch, &mut transport);
            if done {
                println!("counter: {} is done", conduit.peer(stream));
                conduit.close(stream);
                *entry = None;
            }
        }
    }

    fn serve_tcp(&mut self, sockets: &mut SocketSet<'static>) {
        for (handle, session) in self.tcp.iter_mut() {
            let socket = sockets.get_mut::<tcp::Socket>(*handle);
            if !socket.is_open() {
                session.reset();
                let _ = socket.listen(TCP_PORT);
                continue;
            }
            if matches!(socket.state(), tcp::State::Listen | tcp::State::SynReceived) {
                continue;
            }
            let done = converse(session, &mut self.count, self.scratch, &mut OverTcp(socket));
            if done {
                socket.close();
            }
        }
    }
}

/// What carries a session: a Conduit stream or a TCP socket.
trait Transport {
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, StreamError>;
    fn send(&mut self, data: &[u8]) -> Result<usize, StreamError>;
}

struct OverConduit<'a> {
    conduit: &'a mut Conduit,
    stream: Stream,
}

impl Transport for OverConduit<'_> {
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, StreamError> {
        self.conduit.recv(self.stream, buf)
    }

    fn send(&mut self, data: &[u8]) -> Result<usize, StreamError> {
        self.conduit.send(self.stream, data)
    }
}

struct OverTcp<'a, 'b>(&'a mut tcp::Socket<'b>);

impl Transport for OverTcp<'_, '_> {
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, StreamError> {
        self.0.recv_slice(buf).map_err(|_| StreamError::Closed)
    }

    fn send(&mut self, data: &[u8]) -> Result<usize, StreamError> {
        self.0.send_slice(data).map_err(|_| StreamError::Closed)
    }
}

/// Sends what is pending, then reads what can be answered for, until
/// neither moves. Whether the session is over.
fn converse(
    session: &mut Session,
    count: &mut u64,
    scratch: &mut [u8],
    transport: &mut dyn Transport,
) -> bool {
    loop {
        while !session.pending().is_empty() {
            match transport.send(session.pending()) {
                Ok(0) | Err(StreamError::Connecting) => return false,
                Ok(n) => session.sent(n),
                Err(_) => return true,
            }
        }
        if session.broken {
            return true;
        }
        let budget = session.budget().min(scratch.len());
        if budget == 0 {
            return false;
        }
        match transport.recv(&mut scratch[..budget]) {
            Ok(0) | Err(StreamError::Connecting) => return false,
            Ok(n) => session.feed(&scratch[..n], count),
            Err(_) => return true,
        }
    }
}
