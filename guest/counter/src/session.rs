//! One client's conversation, whatever carries it: lines in, lines out.
//!
//! ```text
//! incr      the count after adding one
//! get       the count
//! ping      pong
//! sink N    N more bytes follow (anything); then "ok N"
//! ```
//! Anything else is answered `error: ...`; a line longer than
//! [`LINE_MAX`] ends the session.

use core::fmt::Write;

use jitsu_sdk::heap;

pub const LINE_MAX: usize = 128;
/// Room for answers not yet taken by the transport.
const OUT_MAX: usize = 8192;
/// No answer is longer than this many times its line (`\n` alone gets the
/// 23 bytes of `error: unknown command\n`): reading at most 1/24 of the
/// free room means everything read can be answered.
const ANSWER_RATIO: usize = 24;

pub struct Session {
    line: &'static mut [u8],
    len: usize,
    /// Bytes of a `sink` still to come.
    sinking: u64,
    sunk: u64,
    out: &'static mut [u8],
    out_len: usize,
    pub broken: bool,
}

struct Out<'a> {
    buf: &'a mut [u8],
    len: &'a mut usize,
}

impl Write for Out<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = *self.len + s.len();
        let dest = self.buf.get_mut(*self.len..end).ok_or(core::fmt::Error)?;
        dest.copy_from_slice(s.as_bytes());
        *self.len = end;
        Ok(())
    }
}

impl Session {
    pub fn new() -> Option<Session> {
        Some(Session {
            line: heap::bytes(LINE_MAX)?,
            len: 0,
            sinking: 0,
            sunk: 0,
            out: heap::bytes(OUT_MAX)?,
            out_len: 0,
            broken: false,
        })
    }

    /// A session with no room, for a slot whose buffers could not be had
    /// (the caller gives up on the unikernel).
    pub fn empty() -> Session {
        Session {
            line: &mut [],
            len: 0,
            sinking: 0,
            sunk: 0,
            out: &mut [],
            out_len: 0,
            broken: true,
        }
    }

    pub fn reset(&mut self) {
        self.len = 0;
        self.sinking = 0;
        self.sunk = 0;
        self.out_len = 0;
        self.broken = false;
    }

    /// How many bytes may be read now: as many as can be answered for
    /// (while sinking, the rest of the sink).
    pub fn budget(&self) -> usize {
        match (self.broken, self.sinking) {
            (true, _) => 0,
            (false, 0) => (OUT_MAX - self.out_len) / ANSWER_RATIO,
            (false, n) => usize::try_from(n).unwrap_or(usize::MAX),
        }
    }

    /// Takes what the client sent (at most [`Session::budget`] bytes).
    pub fn feed(&mut self, mut input: &[u8], count: &mut u64) {
        while !input.is_empty() && !self.broken {
            if self.sinking > 0 {
                let n = (input.len() as u64).min(self.sinking) as usize;
                self.sinking -= n as u64;
                input = &input[n..];
                if self.sinking == 0 {
                    let sunk = self.sunk;
                    self.answer(format_args!("ok {sunk}\n"));
                }
                continue;
            }
            let Some(newline) = input.iter().position(|&b| b == b'\n') else {
                let n = input.len().min(LINE_MAX - self.len);
                self.line[self.len..self.len + n].copy_from_slice(&input[..n]);
                self.len += n;
                input = &input[n..];
                if self.len == LINE_MAX {
                    self.broken = true;
                }
                continue;
            };
            if self.len + newline > LINE_MAX {
                self.broken = true;
                break;
            }
            self.line[self.len..self.len + newline].copy_from_slice(&input[..newline]);
            let line_len = self.len + newline;
            self.len = 0;
            input = &input[newline + 1..];
            let mut line = [0u8; LINE_MAX];
            line[..line_len].copy_from_slice(&self.line[..line_len]);
            self.command(&line[..line_len], count);
        }
    }

    fn command(&mut self, line: &[u8], count: &mut u64) {
        let text = core::str::from_utf8(line)
            .unwrap_or("")
            .trim_end_matches('\r');
        let mut words = text.split_ascii_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("incr"), None, None) => {
                *count += 1;
                let n = *count;
                self.answer(format_args!("{n}\n"));
            }
            (Some("get"), None, None) => {
                let n = *count;
                self.answer(format_args!("{n}\n"));
            }
            (Some("ping"), None, None) => self.answer(format_args!("pong\n")),
            (Some("sink"), Some(n), None) => match n.parse::<u64>() {
                Ok(0) => self.answer(format_args!("ok 0\n")),
                Ok(n) => {
                    self.sinking = n;
                    self.sunk = n;
                }
                Err(_) => self.answer(format_args!("error: sink takes a byte count\n")),
            },
            _ => self.answer(format_args!("error: unknown command\n")),
        }
    }

    fn answer(&mut self, args: core::fmt::Arguments) {
        let mut out = Out {
            buf: self.out,
            len: &mut self.out_len,
        };
        if out.write_fmt(args).is_err() {
            self.broken = true;
        }
    }

    /// Answers not yet sent.
    pub fn pending(&self) -> &[u8] {
        &self.out[..self.out_len]
    }

    /// `n` bytes of the answers went out.
    pub fn sent(&mut self, n: usize) {
        self.out.copy_within(n..self.out_len, 0);
        self.out_len -= n;
    }
}
