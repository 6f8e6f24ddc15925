//! hello-http: HTTP/1.1 on port 80 with keep-alive for up to `CONNECTIONS`
//! clients at once. `GET /` (or `HEAD /`) answers a small page; other paths
//! get 404; a request that does not parse gets 400 and the connection closed.
//!
//! Its command line: `[NAME] [counter=CONDUIT-NAME]`. NAME is what the page
//! calls it; with a counter, each page also shows its visit number, which
//! the counter unikernel keeps and hello-http asks it for over Conduit.

#![no_std]
#![no_main]

mod conn;
mod response;
mod visits;

use jitsu_sdk::conduit::Conduit;
use jitsu_sdk::net::Stack;
use jitsu_sdk::{println, Boot};

use conn::Server;

jitsu_sdk::entry!(main);

/// Concurrent connections served; a few more sockets listen so that a new
/// client finds one while others are closing.
const CONNECTIONS: usize = 80;
const PORT: u16 = 80;

fn main(boot: &Boot) -> i32 {
    let mut words = boot.cmdline().split_ascii_whitespace();
    let name = words
        .next()
        .filter(|w| !w.contains('='))
        .unwrap_or("hello-http");
    let counter = boot
        .cmdline()
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("counter="));
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
    let Some(counter) = counter else {
        stack.run(|sockets, now| server.serve(sockets, None, now))
    };
    let mut conduit = match Conduit::new(boot) {
        Ok(conduit) => conduit,
        Err(e) => {
            println!("hello-http: counter={counter}: {e}");
            return 1;
        }
    };
    if !server.count_visits(counter) {
        println!("hello-http: out of memory for the visit counter");
        return 1;
    }
    println!("hello-http: visits counted by {counter}, over Conduit");
    stack.run_with(&mut conduit, |sockets, conduit, now| {
        server.serve(sockets, Some(conduit), now)
    })
}
