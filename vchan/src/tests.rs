//! Both ends over one heap buffer laid out as two processes would map it:
//! a control page, then the pages of rings that have their own, with guard
//! bytes around everything that no operation may touch.

use core::sync::atomic::Ordering;

use proptest::prelude::*;

use crate::layout::{self, Placement, PAGE_SIZE};
use crate::{Endpoint, Error, Peer, Shared};

const GUARD: usize = 256;
const GUARD_BYTE: u8 = 0xa5;

/// Page-aligned memory for a channel: guard, control page, left pages,
/// right pages, guard.
struct Memory {
    buf: Vec<u8>,
    base: usize,
    left: Option<(usize, usize)>,
    right: Option<(usize, usize)>,
    end: usize,
}

impl Memory {
    fn new(left_order: u16, right_order: u16) -> Memory {
        let size = |order: u16| match Placement::of(order) {
            Ok(Placement::OwnPages(n)) => n * PAGE_SIZE,
            _ => 0,
        };
        let (l, r) = (size(left_order), size(right_order));
        // Room for a page-aligned control page after a guard, and a guard
        // after the last ring page; never resized, so never moved.
        let buf = vec![GUARD_BYTE; GUARD + 2 * PAGE_SIZE + l + r + GUARD];
        let addr = buf.as_ptr() as usize;
        let base = (addr + GUARD).next_multiple_of(PAGE_SIZE) - addr;
        let left = (l > 0).then_some((base + PAGE_SIZE, l));
        let right = (r > 0).then_some((base + PAGE_SIZE + l, r));
        Memory {
            end: base + PAGE_SIZE + l + r,
            buf,
            base,
            left,
            right,
        }
    }

    fn region(&mut self, at: usize, len: usize) -> Shared {
        // SAFETY: inside `buf`, which outlives every Endpoint of a test and
        // is not reached through references while they live.
        unsafe { Shared::new(self.buf.as_mut_ptr().add(at), len).unwrap() }
    }

    fn ctrl(&mut self) -> Shared {
        self.region(self.base, PAGE_SIZE)
    }

    fn pages(&mut self) -> (Option<Shared>, Option<Shared>) {
        let (l, r) = (self.left, self.right);
        (
            l.map(|(at, len)| self.region(at, len)),
            r.map(|(at, len)| self.region(at, len)),
        )
    }

    fn pair(&mut self, left_order: u16, right_order: u16) -> (Endpoint, Endpoint) {
        let (l, r) = self.pages();
        let server = Endpoint::serve(self.ctrl(), left_order, right_order, l, r).unwrap();
        let client = Endpoint::attach(self.ctrl(), l, r).unwrap();
        (server, client)
    }

    fn guards_intact(&self) -> bool {
        self.buf[..self.base].iter().all(|&b| b == GUARD_BYTE)
            && self.buf[self.end..].iter().all(|&b| b == GUARD_BYTE)
    }
}

fn orders() -> impl Strategy<Value = (u16, u16)> {
    (10u16..=14, 10u16..=14)
        .prop_filter("one slot each", |(l, r)| layout::placements(*l, *r).is_ok())
}

#[derive(Debug, Clone)]
enum Op {
    Write { server: bool, len: usize },
    Read { server: bool, len: usize },
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        (any::<bool>(), any::<bool>(), 0usize..6000).prop_map(|(write, server, len)| {
            if write {
                Op::Write { server, len }
            } else {
                Op::Read { server, len }
            }
        }),
        0..200,
    )
}

/// One direction's bytes: what was written, what was read.
#[derive(Default)]
struct Stream {
    sent: Vec<u8>,
    got: Vec<u8>,
}

impl Stream {
    fn next_bytes(&self, len: usize) -> Vec<u8> {
        (self.sent.len()..self.sent.len() + len)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect()
    }
}

fn write(end: &mut Endpoint, stream: &mut Stream, len: usize) {
    let data = stream.next_bytes(len);
    let done = end.write(&data).unwrap();
    assert!(done.bytes <= len);
    stream.sent.extend_from_slice(&data[..done.bytes]);
}

fn read(end: &mut Endpoint, stream: &mut Stream, len: usize) {
    let mut buf = vec![0; len];
    let done = end.read(&mut buf).unwrap();
    stream.got.extend_from_slice(&buf[..done.bytes]);
}

proptest! {
    /// Any interleaving of reads and writes of any sizes, both ways, on
    /// rings of any orders: each side reads exactly what the other wrote,
    /// in order, nothing lost or doubled, and nothing outside the channel's
    /// memory is touched.
    #[test]
    fn streams_survive_any_interleaving((lo, ro) in orders(), ops in ops()) {
        let mut memory = Memory::new(lo, ro);
        let (mut server, mut client) = memory.pair(lo, ro);
        let (mut up, mut down) = (Stream::default(), Stream::default());
        for op in ops {
            match op {
                Op::Write { server: true, len } => write(&mut server, &mut down, len),
                Op::Write { server: false, len } => write(&mut client, &mut up, len),
                Op::Read { server: true, len } => read(&mut server, &mut up, len),
                Op::Read { server: false, len } => read(&mut client, &mut down, len),
            }
            prop_assert!(up.got.len() <= up.sent.len() && down.got.len() <= down.sent.len());
        }
        while up.got.len() < up.sent.len() { read(&mut server, &mut up, 4096); }
        while down.got.len() < down.sent.len() { read(&mut client, &mut down, 4096); }
        prop_assert_eq!(&up.got, &up.sent);
        prop_assert_eq!(&down.got, &down.sent);
        prop_assert!(memory.guards_intact());
    }

    /// A peer that scribbles the indices can make reads and writes fail
    /// (the channel is corrupt) but never move bytes outside the rings,
    /// nor more than a ring holds.
    #[test]
    fn scribbled_indices_never_reach_outside_the_rings(
        (lo, ro) in orders(),
        scribbles in proptest::collection::vec((0usize..4, any::<bool>(), any::<u32>(), -70000i32..70000), 1..20),
        lens in proptest::collection::vec(0usize..70000, 1..20),
    ) {
        let mut memory = Memory::new(lo, ro);
        let (mut server, _client) = memory.pair(lo, ro);
        let ctrl = memory.ctrl();
        let biggest = 1usize << lo.max(ro);
        for ((index, absolute, value, delta), len) in scribbles.into_iter().zip(lens) {
            // Anything at all, or a lie near the truth (just past a ring's end).
            let field = ctrl.u32_at(index * 4);
            let lie = if absolute { value } else { field.load(Ordering::Relaxed).wrapping_add(delta as u32) };
            field.store(lie, Ordering::Relaxed);
            let mut buf = vec![0; len];
            match server.read(&mut buf) {
                Ok(t) => prop_assert!(t.bytes <= len.min(biggest)),
                Err(e) => prop_assert!(matches!(e, Error::Corrupt { .. }), "{e}"),
            }
            match server.write(&buf) {
                Ok(t) => prop_assert!(t.bytes <= len.min(biggest)),
                Err(e) => prop_assert!(matches!(e, Error::Corrupt { .. }), "{e}"),
            }
        }
        prop_assert!(memory.guards_intact());
    }

    /// Whatever the control page says, attaching checks it: bad orders
    /// and slots are refused with the reason, never used.
    #[test]
    fn a_client_refuses_a_page_with_bad_orders(lo in any::<u16>(), ro in any::<u16>()) {
        let mut memory = Memory::new(10, 11);
        let (_server, _) = memory.pair(10, 11);
        let ctrl = memory.ctrl();
        ctrl.u16_at(layout::LEFT_ORDER).store(lo, Ordering::Relaxed);
        ctrl.u16_at(layout::RIGHT_ORDER).store(ro, Ordering::Relaxed);
        let attached = Endpoint::attach(ctrl, None, None);
        match layout::placements(lo, ro) {
            Ok((Placement::InControlPage(_), Placement::InControlPage(_))) => prop_assert!(attached.is_ok()),
            Ok(_) => prop_assert_eq!(attached.unwrap_err(), Error::Pages),
            Err(e) => prop_assert_eq!(attached.unwrap_err(), e),
        }
    }
}

/// A notification is due only when the peer asked for one: the server's
/// fresh page asks for the client's first write, and nothing more until
/// someone asks again.
#[test]
fn writers_signal_only_when_the_reader_asked() {
    let mut memory = Memory::new(10, 11);
    let (mut server, mut client) = memory.pair(10, 11);
    assert!(
        client.write(b"one").unwrap().notify,
        "the server asked at setup"
    );
    assert!(!client.write(b"two").unwrap().notify, "nobody asked again");
    let mut buf = [0; 16];
    let got = server.read(&mut buf).unwrap();
    assert_eq!(&buf[..got.bytes], b"onetwo");
    assert!(!got.notify, "the client never asked to hear of reads");
    assert_eq!(server.await_data().unwrap(), 0);
    assert!(
        client.write(b"three").unwrap().notify,
        "the server asked before waiting"
    );
    // The client asked for the server's first write when it attached.
    assert!(server.write(b"hello").unwrap().notify);
    assert!(!server.write(b"again").unwrap().notify);
}

/// A full ring: the writer asks to hear of reads, and the reader's next
/// read is due to signal it.
#[test]
fn a_full_ring_waits_for_a_signalled_read() {
    let mut memory = Memory::new(10, 11);
    let (mut server, mut client) = memory.pair(10, 11);
    let written = client.write(&[7; 2000]).unwrap();
    assert_eq!(written.bytes, 1024, "the left ring holds 1024 bytes");
    assert_eq!(client.await_space().unwrap(), 0);
    let mut buf = [0; 100];
    assert!(server.read(&mut buf).unwrap().notify);
    assert_eq!(client.writable().unwrap(), 100);
}

/// The live bytes: a server sees its client come and go; a client that
/// attaches to a closed server is refused; writes to a gone peer fail.
#[test]
fn each_end_sees_the_other_come_and_go() {
    let mut memory = Memory::new(11, 10);
    let (l, r) = memory.pages();
    let mut server = Endpoint::serve(memory.ctrl(), 11, 10, l, r).unwrap();
    assert_eq!(server.peer(), Peer::NotYet);
    let mut client = Endpoint::attach(memory.ctrl(), l, r).unwrap();
    assert_eq!(server.peer(), Peer::Connected);
    assert_eq!(client.peer(), Peer::Connected);
    client.close();
    assert_eq!(server.peer(), Peer::Gone);
    assert_eq!(server.write(b"x"), Err(Error::PeerGone));
    server.close();
    assert_eq!(
        Endpoint::attach(memory.ctrl(), None, None).unwrap_err(),
        Error::PeerGone
    );
}

/// Two threads stream 4 MiB each way through the smallest rings, with
/// no lock but the indices: what arrives is what was sent.
#[test]
fn two_threads_stream_through_small_rings() {
    const TOTAL: usize = 4 << 20;
    let mut memory = Memory::new(10, 11);
    let (server, client) = memory.pair(10, 11);
    let run = |mut end: Endpoint| {
        move || {
            let (mut sent, mut got) = (0usize, 0usize);
            let mut out = [0u8; 777];
            let mut sum = 0u64;
            while sent < TOTAL || got < TOTAL {
                if sent < TOTAL {
                    for (i, b) in out.iter_mut().enumerate() {
                        *b = ((sent + i) % 253) as u8;
                    }
                    let n = out.len().min(TOTAL - sent);
                    sent += end.write(&out[..n]).unwrap().bytes;
                }
                let mut buf = [0u8; 1000];
                let t = end.read(&mut buf).unwrap();
                for (i, b) in buf[..t.bytes].iter().enumerate() {
                    assert_eq!(*b, ((got + i) % 253) as u8, "byte {}", got + i);
                }
                sum += t.bytes as u64;
                got += t.bytes;
                if t.bytes == 0 {
                    std::thread::yield_now();
                }
            }
            sum
        }
    };
    let a = std::thread::spawn(run(server));
    let b = std::thread::spawn(run(client));
    assert_eq!(a.join().unwrap(), TOTAL as u64);
    assert_eq!(b.join().unwrap(), TOTAL as u64);
    assert!(memory.guards_intact());
}

/// A monitor lays the page out before its guest runs; the client attaches
/// and writes at once; the server guest takes the page over later and
/// reads everything, in order. Both sides live in one contiguous region.
#[test]
fn a_server_takes_over_a_page_its_monitor_laid_out() {
    let region = crate::Region::of(11, 14).unwrap();
    let mut buf = vec![0u8; region.len + PAGE_SIZE];
    let at = (buf.as_ptr() as usize).next_multiple_of(PAGE_SIZE) - buf.as_ptr() as usize;
    // SAFETY: inside `buf`, which outlives both ends.
    let memory = unsafe { Shared::new(buf.as_mut_ptr().add(at), region.len).unwrap() };
    let parts = region.parts(&memory).unwrap();
    Endpoint::lay_out(&parts.ctrl, 11, 14).unwrap();
    let mut client = Endpoint::attach(parts.ctrl, parts.left, parts.right).unwrap();
    assert!(
        client.write(b"early").unwrap().notify,
        "the page asks for it"
    );
    let mut server = Endpoint::open_server(parts.ctrl, parts.left, parts.right).unwrap();
    let mut got = [0u8; 8];
    let t = server.read(&mut got).unwrap();
    assert_eq!(&got[..t.bytes], b"early");
    let big = vec![3u8; 10_000];
    assert_eq!(
        server.write(&big).unwrap().bytes,
        10_000,
        "order 14: 16 KiB"
    );
    assert_eq!(layout::region_of(&parts.ctrl), Ok(region));
    assert!(region
        .parts(&memory.part(0, region.len - 1).unwrap())
        .is_err());
}

/// A monitor marks an end gone for its guest (stopped) or for a peer whose
/// monitor went away: the other end sees it, and data already written
/// stays readable.
#[test]
fn an_end_marked_gone_by_its_monitor_is_seen_gone() {
    let mut memory = Memory::new(10, 11);
    let (mut server, mut client) = memory.pair(10, 11);
    let _ = client.write(b"last words").unwrap();
    crate::mark_gone(&memory.ctrl(), crate::Role::Client);
    assert_eq!(server.peer(), Peer::Gone);
    let mut buf = [0u8; 32];
    assert_eq!(server.read(&mut buf).unwrap().bytes, 10);
    crate::mark_gone(&memory.ctrl(), crate::Role::Server);
    assert_eq!(client.peer(), Peer::Gone);
    assert_eq!(client.write(b"x"), Err(Error::PeerGone));
    assert_eq!(
        Endpoint::open_server(memory.ctrl(), None, None).unwrap_err(),
        Error::PeerGone
    );
}
