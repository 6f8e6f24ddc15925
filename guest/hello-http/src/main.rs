//! hello-http: HTTP/1.1 on port 80 with keep-alive for up to `CONNECTIONS`
//! clients at once. `GET /` (or `HEAD /`) answers a small page; other paths
//! get 404; a request that does not parse gets 400 and the connection closed.

#![no_std]
#![no_main]

mod conn;
mod response;

use jitsu_sdk::net::Stack;
use jitsu_sdk::{println, Boot};

use conn::Server;

jitsu_sdk::entry!(main);

/// Concurrent connections served; a few more sockets listen so that a new
/// client finds one while others are closing.
const CONNECTIONS: usize = 80;
const PORT: u16 = 80;

fn main(boot: &Boot) -> i32 {
    let name = boot
        .cmdline()
        .split_ascii_whitespace()
        .next()
        .unwrap_or("hello-http");
    let mut stack = match Stack::new(boot, CONNECTIONS) {
        Ok(stack) => stack,
        Err(err) => {
            println!("hello-http: {err}");
            return 1;
        }
    };
    let Some(mut server) = Server::new(&mut stack.sockets, CONNECTIONS, PORT, name) else {
        println!("hello-http: out of memory for {CONNECTIONS} connections");
        return 1;
    };
    if let Some(net) = boot.net() {
        let [a, b, c, d] = net.ipv4;
        println!("hello-http: listening on {a}.{b}.{c}.{d}:{PORT}");
    }
    stack.run(|sockets, now| server.serve(sockets, now))
}
