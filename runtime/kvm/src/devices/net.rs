//! The guest NIC: frames between the TAP and guest memory, in batches packed
//! as the ABI describes (little-endian u16 length, then the frame).

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use jitsu_abi::hypercall::FRAME_HEADER_LEN;
use jitsu_abi::ETHERNET_HEADER_LEN;

use jitsu_runtime::egress::EgressFilter;
use jitsu_runtime::tap::Tap;

pub struct NetDevice {
    tap: Arc<Tap>,
    max_frame: usize,
    /// Frames that arrived before the guest ran (held by Synjitsu): the
    /// guest reads them before anything from the TAP.
    pending: VecDeque<Vec<u8>>,
    /// When a frame last moved either way (`clock::now_ns`), for idle stop.
    /// Chatter on the link cannot keep the guest awake: the TAP's filter
    /// (`Tap::admit_only`) never lets it through.
    activity: Arc<AtomicU64>,
    /// What the guest may send (its own addresses only).
    egress: EgressFilter,
    /// The count of refused frames that outlives this VM.
    refused: Arc<AtomicU64>,
    pub stats: NetStats,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct NetStats {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Frames the TAP would not take (queue full) and were dropped.
    pub tx_dropped: u64,
    /// Frames the guest sent as someone else (or in a protocol it has no
    /// business with), dropped (see [`jitsu_runtime::egress`]).
    pub tx_refused: u64,
}

/// A batch from the guest that does not follow the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedBatch {
    pub offset: usize,
    pub frames_sent: u64,
}

impl NetDevice {
    pub fn new(
        tap: Arc<Tap>,
        egress: EgressFilter,
        refused: Arc<AtomicU64>,
        activity: Arc<AtomicU64>,
    ) -> NetDevice {
        let max_frame = tap.mtu().min(jitsu_abi::MTU_MAX) as usize + ETHERNET_HEADER_LEN;
        NetDevice {
            tap,
            max_frame,
            pending: VecDeque::new(),
            activity,
            egress,
            refused,
            stats: NetStats::default(),
        }
    }

    /// Queues frames to be read before the TAP.
    pub fn hand_over(&mut self, frames: Vec<Vec<u8>>) {
        let max = self.max_frame;
        self.pending
            .extend(frames.into_iter().filter(|f| f.len() <= max));
    }

    /// Whether a read would find something without asking the TAP.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether no frame has moved for `d` (only the vCPU thread moves
    /// frames, so on that thread the answer cannot change while it is read).
    pub fn quiet_for(&self, d: std::time::Duration) -> bool {
        let last = self.activity.load(Ordering::Relaxed);
        jitsu_runtime::clock::now_ns().saturating_sub(last) as u128 >= d.as_nanos()
    }

    fn touch(&self) {
        self.activity
            .store(jitsu_runtime::clock::now_ns(), Ordering::Relaxed);
    }

    pub fn tap(&self) -> &Tap {
        &self.tap
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Reads every waiting frame that fits into `buf`. Returns (frames, bytes used).
    pub fn read_batch(&mut self, buf: &mut [u8]) -> std::io::Result<(u64, usize)> {
        let (mut frames, mut used) = (0, 0);
        while let Some(frame) = self.pending.front() {
            if buf.len() - used < FRAME_HEADER_LEN + frame.len() {
                break;
            }
            buf[used..used + FRAME_HEADER_LEN].copy_from_slice(&(frame.len() as u16).to_le_bytes());
            buf[used + FRAME_HEADER_LEN..used + FRAME_HEADER_LEN + frame.len()]
                .copy_from_slice(frame);
            used += FRAME_HEADER_LEN + frame.len();
            frames += 1;
            self.pending.pop_front();
        }
        while self.pending.is_empty() && buf.len() - used >= FRAME_HEADER_LEN + self.max_frame {
            let body = &mut buf[used + FRAME_HEADER_LEN..used + FRAME_HEADER_LEN + self.max_frame];
            match self.tap.file().read(body) {
                Ok(n) => {
                    buf[used..used + FRAME_HEADER_LEN].copy_from_slice(&(n as u16).to_le_bytes());
                    used += FRAME_HEADER_LEN + n;
                    frames += 1;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if frames > 0 => {
                    tracing::debug!(%e, "tap read failed after a partial batch");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        self.stats.rx_frames += frames;
        // Every frame the TAP's filter lets through is the guest's: to its
        // MAC, or an ARP for its address. A frame read counts as activity
        // at once, or an idle stop decided before the guest's next exit
        // would drop a request it has read and not answered yet (a
        // client's broadcast ARP, answered by nobody until it asked again).
        if frames > 0 {
            self.touch();
        }
        Ok((frames, used))
    }

    /// Sends the packed frames of `batch`. Frames the TAP cannot queue are
    /// dropped and counted, as a full NIC queue would drop them.
    pub fn write_batch(&mut self, batch: &[u8]) -> Result<u64, MalformedBatch> {
        let mut frames = 0;
        let mut passed = 0;
        for frame in Frames::new(batch, self.max_frame) {
            let frame = frame.map_err(|offset| MalformedBatch {
                offset,
                frames_sent: frames,
            })?;
            frames += 1;
            if let Err(why) = self.egress.check(frame) {
                self.stats.tx_refused += 1;
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(?why, "refused a frame from the guest");
                continue;
            }
            passed += 1;
            // A TAP takes a frame whole or not at all.
            match self.tap.file().write(frame) {
                Ok(n) if n == frame.len() => self.stats.tx_frames += 1,
                Ok(_) => self.stats.tx_dropped += 1,
                Err(e) => {
                    self.stats.tx_dropped += 1;
                    tracing::trace!(%e, "tap write dropped a frame");
                }
            }
        }
        // Refused frames do not keep a guest awake.
        if passed > 0 {
            self.touch();
        }
        Ok(frames)
    }
}

/// Walks a packed batch; yields `Err(offset)` at the first malformed record.
pub struct Frames<'a> {
    batch: &'a [u8],
    offset: usize,
    max_frame: usize,
}

impl<'a> Frames<'a> {
    pub fn new(batch: &'a [u8], max_frame: usize) -> Frames<'a> {
        Frames {
            batch,
            offset: 0,
            max_frame,
        }
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<&'a [u8], usize>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.offset == self.batch.len() {
            return None;
        }
        let at = self.offset;
        let fail = |s: &mut Self| {
            s.offset = s.batch.len();
            Some(Err(at))
        };
        let Some(header) = self.batch.get(at..at + FRAME_HEADER_LEN) else {
            return fail(self);
        };
        let len = u16::from_le_bytes([header[0], header[1]]) as usize;
        if !(ETHERNET_HEADER_LEN..=self.max_frame).contains(&len) {
            return fail(self);
        }
        let start = at + FRAME_HEADER_LEN;
        let Some(frame) = self.batch.get(start..start + len) else {
            return fail(self);
        };
        self.offset = start + len;
        Some(Ok(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pack(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            out.extend_from_slice(&(f.len() as u16).to_le_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    #[test]
    fn rejects_short_long_and_torn_records() {
        let ok = vec![0u8; 60];
        assert_eq!(
            Frames::new(&pack(std::slice::from_ref(&ok)), 1514).count(),
            1
        );
        let short = pack(&[vec![0; 13]]);
        assert_eq!(Frames::new(&short, 1514).next(), Some(Err(0)));
        let long = pack(&[vec![0; 1515]]);
        assert_eq!(Frames::new(&long, 1514).next(), Some(Err(0)));
        let mut torn = pack(&[ok.clone(), ok]);
        torn.truncate(100);
        let items: Vec<_> = Frames::new(&torn, 1514).collect();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1], Err(62));
    }

    proptest! {
        #[test]
        fn packed_frames_round_trip(frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 14..1514), 0..8)) {
            let packed = pack(&frames);
            let parsed: Vec<&[u8]> = Frames::new(&packed, 1514).map(|f| f.unwrap()).collect();
            prop_assert_eq!(parsed.len(), frames.len());
            for (a, b) in parsed.iter().zip(&frames) {
                prop_assert_eq!(*a, b.as_slice());
            }
        }

        #[test]
        fn arbitrary_batches_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut total = 0;
            for frame in Frames::new(&bytes, 1514).flatten() {
                total += frame.len() + 2;
            }
            prop_assert!(total <= bytes.len());
        }
    }
}
