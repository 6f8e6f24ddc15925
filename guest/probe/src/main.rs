//! probe: measures what one unikernel gets from another, over Conduit or
//! over TCP, and prints it on one line for the benchmark harness:
//!
//! ```text
//! probe rtt  conduit NAME N     N round trips of "ping" (after a warm-up)
//! probe rtt  tcp     ADDR N
//! probe bulk conduit NAME MIB   MIB mebibytes one way, then the answer
//! probe bulk tcp     ADDR MIB
//! ```
//! The peer is the counter unikernel (its Conduit name, or its address,
//! port 9000). A last word `spin=MICROSECONDS` sets how long the event
//! loop watches the rings after traffic (see `Conduit::set_spin`). Exits 0
//! with the figures, or 1 saying what failed.

#![no_std]
#![no_main]

mod link;

use core::fmt::Write;

use jitsu_sdk::conduit::Conduit;
use jitsu_sdk::net::Stack;
use jitsu_sdk::smoltcp::time::Duration;
use jitsu_sdk::{clock, exit, heap, println, Boot};

use link::Link;

jitsu_sdk::entry!(main);

/// Round trips before the measured ones (the first boots the peer).
const WARM_UP: usize = 20;
/// How long the whole run may take.
const DEADLINE_NS: u64 = 120_000_000_000;

enum Plan {
    RoundTrips(usize),
    Bulk(u64),
}

fn main(boot: &Boot) -> i32 {
    let mut words = boot.cmdline().split_ascii_whitespace();
    let (Some(mode), Some(transport), Some(target), Some(n)) = (
        words.next(),
        words.next(),
        words.next(),
        words.next().and_then(|n| n.parse::<u64>().ok()),
    ) else {
        println!("probe: usage: rtt|bulk conduit|tcp NAME|ADDR COUNT");
        return 2;
    };
    let plan = match mode {
        "rtt" => Plan::RoundTrips(n as usize),
        "bulk" => Plan::Bulk(n << 20),
        _ => {
            println!("probe: {mode}: want rtt or bulk");
            return 2;
        }
    };
    let mut conduit = match Conduit::new(boot) {
        Ok(conduit) => conduit,
        Err(e) => {
            println!("probe: {e}");
            return 1;
        }
    };
    if let Some(spin) = words
        .next()
        .and_then(|w| w.strip_prefix("spin=")?.parse().ok())
    {
        conduit.set_spin(Duration::from_micros(spin));
    }
    // Over Conduit the probe needs no network.
    let mut stack = match (transport, Stack::new(boot, 2)) {
        (_, Ok(stack)) => Some(stack),
        ("conduit", Err(_)) => None,
        (_, Err(e)) => {
            println!("probe: {e}");
            return 1;
        }
    };
    let link = match Link::open(transport, target, stack.as_mut(), &mut conduit) {
        Ok(link) => link,
        Err(why) => {
            println!("probe: {transport} {target}: {why}");
            return 1;
        }
    };
    let Some(mut run) = Run::new(plan, link, transport) else {
        println!("probe: out of memory");
        return 1;
    };
    let mut round = move |io: &mut link::Io| match run.step(io) {
        Ok(true) => {
            run.report();
            exit(0)
        }
        Ok(false) if clock::now_nanos() > run.started + DEADLINE_NS => {
            println!("probe: no end within {} s", DEADLINE_NS / 1_000_000_000);
            exit(1)
        }
        Ok(false) => Some(Duration::from_millis(100)),
        Err(why) => {
            println!("probe: {why}");
            exit(1)
        }
    };
    match stack.as_mut() {
        Some(stack) => stack.run_with(&mut conduit, |sockets, conduit, _| {
            round(&mut link::Io {
                sockets: Some(sockets),
                conduit,
            })
        }),
        None => conduit.run(|conduit, _| {
            round(&mut link::Io {
                sockets: None,
                conduit,
            })
        }),
    }
}

struct Run {
    plan: Plan,
    link: Link,
    transport: &'static str,
    /// Said once the link is open (a test waits for it).
    open: bool,
    started: u64,
    /// Round trips: when the ping in flight went out, and the samples.
    sent_at: Option<u64>,
    samples: &'static mut [u64],
    done: usize,
    /// Bulk: bytes sent, when the first went, and the answer so far.
    header_sent: bool,
    bytes_sent: u64,
    first_byte: u64,
    finished: u64,
    answer: [u8; 64],
    answer_len: usize,
    chunk: &'static mut [u8],
}

impl Run {
    fn new(plan: Plan, link: Link, transport: &'static str) -> Option<Run> {
        let samples = match plan {
            Plan::RoundTrips(n) => heap::array(n + WARM_UP, |_| 0u64)?,
            Plan::Bulk(_) => &mut [],
        };
        let chunk = heap::bytes(64 * 1024)?;
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = b'a' + (i % 26) as u8;
        }
        Some(Run {
            plan,
            link,
            transport,
            open: false,
            started: clock::now_nanos(),
            sent_at: None,
            samples,
            done: 0,
            header_sent: false,
            bytes_sent: 0,
            first_byte: 0,
            finished: 0,
            answer: [0; 64],
            answer_len: 0,
            chunk,
        })
    }

    /// Moves the run on; true once it is over.
    fn step(&mut self, io: &mut link::Io) -> Result<bool, &'static str> {
        if !self.link.is_open(io)? {
            return Ok(false);
        }
        if !self.open {
            self.open = true;
            println!("probe: open");
        }
        loop {
            let progressed = match self.plan {
                Plan::RoundTrips(n) => self.round_trip(io, n)?,
                Plan::Bulk(total) => self.bulk(io, total)?,
            };
            if self.finished != 0 {
                return Ok(true);
            }
            if !progressed {
                return Ok(false);
            }
        }
    }

    fn round_trip(&mut self, io: &mut link::Io, n: usize) -> Result<bool, &'static str> {
        match self.sent_at {
            None => {
                if self.link.send(io, b"ping\n")? != 5 {
                    return Err("a 5-byte ping did not fit");
                }
                self.sent_at = Some(clock::now_nanos());
                self.answer_len = 0;
                Ok(true)
            }
            Some(at) => {
                if !self.read_answer(io)? {
                    return Ok(false);
                }
                if &self.answer[..self.answer_len] != b"pong\n" {
                    return Err("the peer did not answer pong");
                }
                self.samples[self.done] = clock::now_nanos() - at;
                self.done += 1;
                self.sent_at = None;
                if self.done == n + WARM_UP {
                    self.finished = clock::now_nanos();
                }
                Ok(true)
            }
        }
    }

    fn bulk(&mut self, io: &mut link::Io, total: u64) -> Result<bool, &'static str> {
        if !self.header_sent {
            let mut header = Line::default();
            let _ = writeln!(header, "sink {total}");
            if self.link.send(io, header.as_bytes())? != header.len {
                return Err("the header did not fit");
            }
            self.header_sent = true;
            self.first_byte = clock::now_nanos();
            self.answer_len = 0;
            return Ok(true);
        }
        if self.bytes_sent < total {
            let n = (total - self.bytes_sent).min(self.chunk.len() as u64) as usize;
            let sent = self.link.send(io, &self.chunk[..n])?;
            self.bytes_sent += sent as u64;
            return Ok(sent > 0);
        }
        if !self.read_answer(io)? {
            return Ok(false);
        }
        let mut expected = Line::default();
        let _ = writeln!(expected, "ok {total}");
        if &self.answer[..self.answer_len] != expected.as_bytes() {
            return Err("the peer did not confirm every byte");
        }
        self.finished = clock::now_nanos();
        Ok(true)
    }

    /// Reads one line of answer; true once it is whole.
    fn read_answer(&mut self, io: &mut link::Io) -> Result<bool, &'static str> {
        while self.answer_len < self.answer.len() {
            let mut byte = [0u8; 1];
            if self.link.recv(io, &mut byte)? == 0 {
                return Ok(false);
            }
            self.answer[self.answer_len] = byte[0];
            self.answer_len += 1;
            if byte[0] == b'\n' {
                return Ok(true);
            }
        }
        Err("an answer longer than a line")
    }

    fn report(&mut self) {
        match self.plan {
            Plan::RoundTrips(n) => {
                let measured = &mut self.samples[WARM_UP..WARM_UP + n];
                measured.sort_unstable();
                let at = |q: usize| measured[(measured.len() * q / 100).min(measured.len() - 1)];
                println!(
                    "probe: rtt {} n={n} median_ns={} p99_ns={} first_ns={}",
                    self.transport,
                    at(50),
                    at(99),
                    self.samples[0]
                );
            }
            Plan::Bulk(total) => {
                let ns = (self.finished - self.first_byte).max(1);
                println!(
                    "probe: bulk {} bytes={total} ns={ns} mib_per_s={}",
                    self.transport,
                    total as u128 * 1_000_000_000 / ns as u128 / (1 << 20)
                );
            }
        }
    }
}

/// A short line built with `write!`.
struct Line {
    bytes: [u8; 64],
    len: usize,
}

impl Default for Line {
    fn default() -> Line {
        Line {
            bytes: [0; 64],
            len: 0,
        }
    }
}

impl Line {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        self.bytes
            .get_mut(self.len..end)
            .ok_or(core::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}
