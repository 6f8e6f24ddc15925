//! The probe's one connection to the counter: a Conduit stream or a TCP
//! socket, with the same three calls.

use jitsu_sdk::conduit::{Conduit, Stream, StreamError};
use jitsu_sdk::heap;
use jitsu_sdk::net::Stack;
use jitsu_sdk::smoltcp::iface::{SocketHandle, SocketSet};
use jitsu_sdk::smoltcp::socket::tcp;
use jitsu_sdk::smoltcp::wire::{IpAddress, Ipv4Address};

const PORT: &str = "probe";
const TCP_PORT: u16 = 9000;
const LOCAL_PORT: u16 = 49152;
const TCP_BUFFER: usize = 256 * 1024;

pub enum Link {
    Conduit(Stream),
    Tcp(SocketHandle),
}

/// What a link needs to move bytes: the loop's sockets and streams.
pub struct Io<'a> {
    pub sockets: Option<&'a mut SocketSet<'static>>,
    pub conduit: &'a mut Conduit,
}

impl Io<'_> {
    fn socket(&mut self, handle: SocketHandle) -> Result<&mut tcp::Socket<'static>, &'static str> {
        let sockets = self.sockets.as_deref_mut().ok_or("no network")?;
        Ok(sockets.get_mut::<tcp::Socket>(handle))
    }
}

impl Link {
    pub fn open(
        transport: &str,
        target: &str,
        stack: Option<&mut Stack>,
        conduit: &mut Conduit,
    ) -> Result<Link, &'static str> {
        match transport {
            "conduit" => conduit
                .connect_with_orders(target, PORT, 18, 12)
                .map(Link::Conduit)
                .map_err(|_| "cannot ask for a stream (a Conduit name?)"),
            "tcp" => {
                let stack = stack.ok_or("no network")?;
                let ip: Ipv4Address = target.parse().map_err(|_| "not an IPv4 address")?;
                let rx = heap::bytes(TCP_BUFFER).ok_or("out of memory")?;
                let tx = heap::bytes(TCP_BUFFER).ok_or("out of memory")?;
                let mut socket =
                    tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
                socket.set_nagle_enabled(false);
                socket
                    .connect(
                        stack.iface.context(),
                        (IpAddress::Ipv4(ip), TCP_PORT),
                        LOCAL_PORT,
                    )
                    .map_err(|_| "cannot connect")?;
                Ok(Link::Tcp(stack.sockets.add(socket)))
            }
            _ => Err("want conduit or tcp"),
        }
    }

    pub fn is_open(&self, io: &mut Io) -> Result<bool, &'static str> {
        match self {
            Link::Conduit(stream) => match io.conduit.recv(*stream, &mut []) {
                Ok(_) => Ok(true),
                Err(StreamError::Connecting) => Ok(false),
                Err(e) => Err(stream_error(e)),
            },
            Link::Tcp(handle) => {
                let socket = io.socket(*handle)?;
                match socket.state() {
                    tcp::State::SynSent | tcp::State::SynReceived => Ok(false),
                    tcp::State::Established => Ok(true),
                    _ => Err("the TCP connection ended"),
                }
            }
        }
    }

    pub fn send(&self, io: &mut Io, data: &[u8]) -> Result<usize, &'static str> {
        match self {
            Link::Conduit(stream) => io.conduit.send(*stream, data).map_err(stream_error),
            Link::Tcp(handle) => io
                .socket(*handle)?
                .send_slice(data)
                .map_err(|_| "the TCP connection ended"),
        }
    }

    pub fn recv(&self, io: &mut Io, buf: &mut [u8]) -> Result<usize, &'static str> {
        match self {
            Link::Conduit(stream) => io.conduit.recv(*stream, buf).map_err(stream_error),
            Link::Tcp(handle) => io
                .socket(*handle)?
                .recv_slice(buf)
                .map_err(|_| "the TCP connection ended"),
        }
    }
}

fn stream_error(e: StreamError) -> &'static str {
    match e {
        StreamError::Refused(_) => "the counter refused the stream",
        StreamError::Closed => "the counter closed the stream",
        StreamError::Broken => "the counter broke the channel",
        StreamError::Connecting | StreamError::Stale => "the stream is not open",
    }
}
