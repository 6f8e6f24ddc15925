//! The visit counter: another unikernel, asked over Conduit. Each page
//! asks it for the next number (`incr`); answers come back in order, one
//! line each, on one stream kept open between requests. If the counter is
//! parked, the first question boots it; if it goes away, the pages waiting
//! say so and the next question connects again.

use jitsu_sdk::conduit::{Conduit, Stream, StreamError};
use jitsu_sdk::heap;

/// Questions in flight at most (one per connection is the most a server
/// of `CONNECTIONS` asks at once).
const WAITING_MAX: usize = 128;
const LINE_MAX: usize = 24;

/// What a page shows of the count.
#[derive(Clone, Copy)]
pub enum Count {
    Number(u64),
    Unavailable(&'static str),
}

pub struct Visits {
    counter: &'static str,
    stream: Option<Stream>,
    /// Connections waiting for an answer, oldest first (a ring).
    waiting: &'static mut [u16],
    first: usize,
    queued: usize,
    /// Questions written but not yet sent whole, and the answer so far.
    out: usize,
    line: [u8; LINE_MAX],
    len: usize,
}

impl Visits {
    pub fn new(counter: &'static str) -> Option<Visits> {
        Some(Visits {
            counter,
            stream: None,
            waiting: heap::array(WAITING_MAX, |_| 0u16)?,
            first: 0,
            queued: 0,
            out: 0,
            line: [0; LINE_MAX],
            len: 0,
        })
    }

    /// Asks the count for connection `conn`; false if it cannot be asked
    /// (too many waiting, or no stream to be had).
    pub fn ask(&mut self, conduit: &mut Conduit, conn: usize) -> bool {
        if self.queued == WAITING_MAX {
            return false;
        }
        if self.stream.is_none() {
            match conduit.connect(self.counter, "visits") {
                Ok(stream) => self.stream = Some(stream),
                Err(_) => return false,
            }
        }
        self.waiting[(self.first + self.queued) % WAITING_MAX] = conn as u16;
        self.queued += 1;
        self.out += 1;
        true
    }

    /// Sends what is asked and takes what came: `answer(conn, count)` for
    /// each connection whose answer is in (or who will get none).
    pub fn exchange(&mut self, conduit: &mut Conduit, mut answer: impl FnMut(usize, Count)) {
        let Some(stream) = self.stream else { return };
        if let Err(e) = self.exchange_on(conduit, stream, &mut answer) {
            let why = match e {
                StreamError::Refused(_) => "the counter refused the stream",
                StreamError::Closed => "the counter went away",
                _ => "the counter's stream broke",
            };
            conduit.close(stream);
            self.stream = None;
            self.out = 0;
            self.len = 0;
            while let Some(conn) = self.pop() {
                answer(conn, Count::Unavailable(why));
            }
        }
    }

    fn exchange_on(
        &mut self,
        conduit: &mut Conduit,
        stream: Stream,
        answer: &mut impl FnMut(usize, Count),
    ) -> Result<(), StreamError> {
        while self.out > 0 {
            match conduit.send(stream, b"incr\n") {
                Ok(5) => self.out -= 1,
                // The ring is full (or the stream not open yet): later. A
                // 5-byte question is never sent in part: the ring's room
                // only ever grows, and it is 64 KiB.
                Ok(_) | Err(StreamError::Connecting) => break,
                Err(e) => return Err(e),
            }
        }
        loop {
            let mut byte = [0u8; 1];
            match conduit.recv(stream, &mut byte) {
                Ok(0) | Err(StreamError::Connecting) => return Ok(()),
                Ok(_) if byte[0] == b'\n' => {
                    let number = core::str::from_utf8(&self.line[..self.len])
                        .ok()
                        .and_then(|t| t.parse::<u64>().ok());
                    self.len = 0;
                    if let Some(conn) = self.pop() {
                        answer(
                            conn,
                            number.map_or(
                                Count::Unavailable("the counter said nonsense"),
                                Count::Number,
                            ),
                        );
                    }
                }
                Ok(_) if self.len < LINE_MAX => {
                    self.line[self.len] = byte[0];
                    self.len += 1;
                }
                Ok(_) => return Err(StreamError::Broken),
                Err(e) => return Err(e),
            }
        }
    }

    fn pop(&mut self) -> Option<usize> {
        if self.queued == 0 {
            return None;
        }
        let conn = self.waiting[self.first] as usize;
        self.first = (self.first + 1) % WAITING_MAX;
        self.queued -= 1;
        Some(conn)
    }
}
