//! A client as the tests need one: a GET on a fresh connection that also
//! reports whether TCP had to retransmit (a SYN lost while a unikernel
//! booted shows up here), and the parkings every lazy path is tried on.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

/// How long a service is left parked before its next request, as multiples
/// of its idle timeout: never booted since start (3x), then re-parked by
/// idleness and left for half of it, all of it, and five times it.
pub const PARKINGS: [f64; 4] = [3.0, 0.5, 1.0, 5.0];

/// GETs `/` on a fresh connection (call it inside the right namespace);
/// returns the reply and the connection's total retransmissions.
pub fn get(addr: SocketAddr) -> (String, u32) {
    try_get(addr).unwrap_or_else(|e| panic!("GET http://{addr}/: {e}"))
}

/// [`get`], with the error of a connection that failed.
pub fn try_get(addr: SocketAddr) -> std::io::Result<(String, u32)> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: jitsu\r\nConnection: close\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok((reply, total_retrans(&stream)))
}

/// TCP_INFO's count of segments this connection sent again.
pub fn total_retrans(stream: &TcpStream) -> u32 {
    // SAFETY: tcp_info is plain data; getsockopt fills at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the pointers are valid for the lengths given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_total_retrans
}
