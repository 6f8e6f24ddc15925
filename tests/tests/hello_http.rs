//! hello-http on a TAP in a private network namespace: real KVM, a real TAP,
//! curl and raw sockets from inside the namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use jitsu_e2e::netns::NetNs;
use jitsu_e2e::process::{run_with_timeout, Guarded};
use jitsu_e2e::{guest, jitsu_bin};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A running hello-http and the namespace it serves in.
struct Server {
    monitor: Guarded,
    ns: NetNs,
}

impl Server {
    fn start() -> Server {
        let ns = NetNs::with_tap();
        let mut cmd = ns.command(jitsu_bin());
        cmd.arg("run")
            .args(ns.jitsu_net_args())
            .arg(guest("hello-http"))
            .stdout(Stdio::piped());
        let mut monitor = Guarded::spawn(&mut cmd);
        monitor.wait_for_output("hello-http: listening on 10.77.0.2:80", TIMEOUT);
        Server { monitor, ns }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.ns.guest_ip, 80))
    }

    fn curl(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.ns.guest_ip);
        let mut cmd = self.ns.command("curl");
        cmd.args(["-sS", "--max-time", "5", "-w", "\n%{http_code}", &url]);
        let out = run_with_timeout(&mut cmd, TIMEOUT);
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').expect("status line");
        (code.parse().expect("status code"), body.to_string())
    }

    /// Sends `request` on a fresh connection from inside the namespace and
    /// reads until the server closes or `until` appears.
    fn raw(&self, request: &[u8], until: Option<&str>) -> String {
        let addr = self.addr();
        self.ns.run_in(|| exchange(addr, request, until))
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
}

fn exchange(addr: SocketAddr, request: &[u8], until: Option<&str>) -> String {
    let mut stream = connect(addr);
    stream.write_all(request).expect("send");
    read_until(&mut stream, until)
}

fn read_until(stream: &mut TcpStream, until: Option<&str>) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if until.is_some_and(|u| String::from_utf8_lossy(&got).contains(u)) {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read after {} bytes: {e}", got.len()),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Reads exactly one response (head + Content-Length body) off a kept-alive connection.
fn read_response(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).expect("read head"),
            1,
            "closed mid-head"
        );
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("Content-Length");
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).expect("read body");
    head + &String::from_utf8_lossy(&body)
}

#[test]
fn curl_gets_the_page() {
    let server = Server::start();
    let (code, body) = server.curl("/");
    assert_eq!(code, 200);
    assert!(body.contains("Hello from hello-http"), "{body}");
    assert!(
        body.contains("Uptime: ") && body.contains("Requests served: 1"),
        "{body}"
    );
    let (code, body) = server.curl("/");
    assert_eq!(code, 200);
    assert!(
        body.contains("Requests served: 2"),
        "the counter counts: {body}"
    );
}

#[test]
fn unknown_path_is_404() {
    let server = Server::start();
    assert_eq!(server.curl("/no/such/page").0, 404);
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let server = Server::start();
    let addr = server.addr();
    let replies = server.ns.run_in(move || {
        let mut stream = connect(addr);
        (0..3)
            .map(|_| {
                stream
                    .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    .unwrap();
                read_response(&mut stream)
            })
            .collect::<Vec<_>>()
    });
    for (n, reply) in replies.iter().enumerate() {
        assert!(
            reply.starts_with("HTTP/1.1 200 OK\r\n") && reply.contains("Connection: keep-alive"),
            "{reply}"
        );
        assert!(
            reply.contains(&format!("Requests served: {}<", n + 1)),
            "{reply}"
        );
    }
}

#[test]
fn malformed_request_gets_400_and_the_connection_closed() {
    let server = Server::start();
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        // Read to EOF: the server must close after the 400.
        let reply = server.raw(bad, None);
        assert!(
            reply.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{:?} -> {reply}",
            String::from_utf8_lossy(bad)
        );
        assert!(reply.contains("Connection: close"), "{reply}");
    }
    let oversized = [b"GET /".as_slice(), &[b'a'; 5000], b" HTTP/1.1\r\n\r\n"].concat();
    assert!(server.raw(&oversized, None).starts_with("HTTP/1.1 400"));
    assert_eq!(server.curl("/").0, 200, "still serving after bad clients");
}

#[test]
fn client_garbage_never_crashes_the_unikernel() {
    let mut server = Server::start();
    let addr = server.addr();
    server.ns.run_in(move || {
        let mut garbage = jitsu_e2e::Junk::new(0x2545_f491_4f6c_dd1d_u64);
        for round in 0..40 {
            let len = 1 + (round * 97) % 3000;
            let junk = garbage.bytes(len);
            let mut stream = connect(addr);
            let _ = stream.write_all(&junk);
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink);
        }
    });
    assert!(
        server.monitor.child().try_wait().unwrap().is_none(),
        "the monitor exited"
    );
    assert_eq!(server.curl("/").0, 200);
}

#[test]
fn sixty_four_concurrent_clients_all_get_pages() {
    let server = Server::start();
    let addr = server.addr();
    let replies = server.ns.run_in(move || {
        // All 64 connections are open before any request is sent.
        let mut streams: Vec<TcpStream> = (0..64).map(|_| connect(addr)).collect();
        for s in &mut streams {
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
        }
        streams
            .iter_mut()
            .map(|s| read_until(s, None))
            .collect::<Vec<_>>()
    });
    assert_eq!(replies.len(), 64);
    for reply in &replies {
        assert!(
            reply.starts_with("HTTP/1.1 200 OK\r\n") && reply.contains("Hello from hello-http"),
            "{reply}"
        );
    }
    let mut counts: Vec<u32> = replies
        .iter()
        .map(|r| {
            r.split("Requests served: ")
                .nth(1)
                .and_then(|s| s.split('<').next())
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    counts.sort_unstable();
    assert_eq!(
        counts,
        (1..=64).collect::<Vec<_>>(),
        "each request counted once"
    );
}

#[test]
fn guest_threads_are_confined_by_seccomp() {
    let mut server = Server::start();
    let pid = server.monitor.pid();
    // `ip netns exec` execs jitsu in place, so the child is the monitor.
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("task list");
    let mut vcpu = None;
    for task in tasks {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap();
        if comm.trim() == "vcpu0" {
            vcpu = Some(std::fs::read_to_string(dir.join("status")).unwrap());
        }
    }
    let status = vcpu.expect("a vcpu0 thread");
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["Seccomp:", "2"])),
        "{status}"
    );
    // Still serving under the filter.
    assert_eq!(server.curl("/").0, 200);
    assert!(server.monitor.child().try_wait().unwrap().is_none());
}
