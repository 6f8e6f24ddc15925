//! The control page, as libxenvchan lays it out (`struct vchan_interface`):
//!
//! ```text
//! 0  left.cons   u32    left:  the client writes, the server reads
//! 4  left.prod   u32
//! 8  right.cons  u32    right: the server writes, the client reads
//! 12 right.prod  u32
//! 16 left_order  u16    log2 of each ring's size
//! 18 right_order u16
//! 20 cli_live    u8     0 gone, 1 connected, 2 not yet connected
//! 21 srv_live    u8
//! 22 cli_notify  u8     what the client must signal (the server asks)
//! 23 srv_notify  u8     what the server must signal (the client asks)
//! 24 grants      u32[]  Xen: grant refs of rings in pages of their own
//! ```
//!
//! A ring of order 10 lives at offset 1024 of the control page, one of
//! order 11 at 2048; larger ones (up to order 20) have pages of their own.
//! The indices run free: `prod - cons` (wrapping) is what is in a ring.

use core::fmt;
use core::sync::atomic::Ordering;

use crate::shared::Shared;

pub const PAGE_SIZE: usize = 4096;

pub const LEFT_CONS: usize = 0;
pub const LEFT_PROD: usize = 4;
pub const RIGHT_CONS: usize = 8;
pub const RIGHT_PROD: usize = 12;
pub const LEFT_ORDER: usize = 16;
pub const RIGHT_ORDER: usize = 18;
pub const CLI_LIVE: usize = 20;
pub const SRV_LIVE: usize = 21;
pub const CLI_NOTIFY: usize = 22;
pub const SRV_NOTIFY: usize = 23;
pub const GRANTS: usize = 24;

/// Notify bits: signal the peer when data was written, or consumed.
pub const NOTIFY_WRITE: u8 = 0x1;
pub const NOTIFY_READ: u8 = 0x2;

/// Live byte values.
pub const GONE: u8 = 0;
pub const CONNECTED: u8 = 1;
pub const NOT_YET: u8 = 2;

pub const MIN_ORDER: u16 = 10;
pub const MAX_ORDER: u16 = 20;
const SMALL_RING_OFFSET: usize = 1024;
const LARGE_RING_OFFSET: usize = 2048;

/// Where a ring of some order lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Inside the control page, at this offset.
    InControlPage(usize),
    /// In this many pages of its own.
    OwnPages(usize),
}

impl Placement {
    pub fn of(order: u16) -> Result<Placement, Error> {
        match order {
            10 => Ok(Placement::InControlPage(SMALL_RING_OFFSET)),
            11 => Ok(Placement::InControlPage(LARGE_RING_OFFSET)),
            12..=MAX_ORDER => Ok(Placement::OwnPages(1 << (order - 12))),
            _ => Err(Error::Order(order)),
        }
    }
}

/// Checks a pair of orders: each in range, and not both in the control
/// page's one slot of a size. Returns where each ring lives.
pub fn placements(left: u16, right: u16) -> Result<(Placement, Placement), Error> {
    let (l, r) = (Placement::of(left)?, Placement::of(right)?);
    if let (Placement::InControlPage(a), Placement::InControlPage(b)) = (l, r) {
        if a == b {
            return Err(Error::SameSlot(left));
        }
    }
    let grants = [l, r]
        .iter()
        .map(|p| match p {
            Placement::OwnPages(n) => *n,
            Placement::InControlPage(_) => 0,
        })
        .sum::<usize>();
    // The grant list must end before the first ring inside the page.
    let grants_end = GRANTS + 4 * grants;
    let first_ring = [l, r]
        .iter()
        .filter_map(|p| match p {
            Placement::InControlPage(at) => Some(*at),
            Placement::OwnPages(_) => None,
        })
        .min()
        .unwrap_or(PAGE_SIZE);
    if grants_end > first_ring {
        return Err(Error::TooManyGrants(grants));
    }
    Ok((l, r))
}

/// A channel in one contiguous piece of memory (how a KVM monitor shares
/// it, as one memfd): the control page, then the left ring's own pages (if
/// it has any), then the right ring's. Offsets are from the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub left_order: u16,
    pub right_order: u16,
    /// Where each ring's own pages start (None: it lives in the control page).
    pub left_pages: Option<usize>,
    pub right_pages: Option<usize>,
    /// Bytes in all, a whole number of pages.
    pub len: usize,
}

impl Region {
    pub fn of(left_order: u16, right_order: u16) -> Result<Region, Error> {
        let (left, right) = placements(left_order, right_order)?;
        let mut len = PAGE_SIZE;
        let mut own = |placement| match placement {
            Placement::OwnPages(pages) => {
                let at = len;
                len += pages * PAGE_SIZE;
                Some(at)
            }
            Placement::InControlPage(_) => None,
        };
        let (left_pages, right_pages) = (own(left), own(right));
        Ok(Region {
            left_order,
            right_order,
            left_pages,
            right_pages,
            len,
        })
    }

    /// The control page and the rings' own pages, as parts of `memory`.
    pub fn parts(&self, memory: &Shared) -> Result<ChannelParts, Error> {
        let part = |at: usize, len: usize| {
            memory.part(at, len).ok_or(Error::TooSmall {
                need: at + len,
                have: memory.len(),
            })
        };
        let ring = |at: Option<usize>, order: u16| at.map(|at| part(at, 1 << order)).transpose();
        Ok(ChannelParts {
            ctrl: part(0, PAGE_SIZE)?,
            left: ring(self.left_pages, self.left_order)?,
            right: ring(self.right_pages, self.right_order)?,
        })
    }
}

/// What [`crate::Endpoint`] takes: the control page and the pages of rings
/// that have their own.
#[derive(Debug, Clone, Copy)]
pub struct ChannelParts {
    pub ctrl: Shared,
    pub left: Option<Shared>,
    pub right: Option<Shared>,
}

/// The orders a laid-out control page names (checked), and so the region
/// its channel takes.
pub fn region_of(ctrl: &Shared) -> Result<Region, Error> {
    if ctrl.len() < PAGE_SIZE {
        return Err(Error::TooSmall {
            need: PAGE_SIZE,
            have: ctrl.len(),
        });
    }
    let left = ctrl.u16_at(LEFT_ORDER).load(Ordering::Acquire);
    let right = ctrl.u16_at(RIGHT_ORDER).load(Ordering::Acquire);
    Region::of(left, right)
}

/// The four ring indices as they stand (left cons, left prod, right cons,
/// right prod): what a monitor compares to tell whether a channel moved.
pub fn indices(ctrl: &Shared) -> [u32; 4] {
    [LEFT_CONS, LEFT_PROD, RIGHT_CONS, RIGHT_PROD].map(|at| ctrl.u32_at(at).load(Ordering::Relaxed))
}

/// Why a channel cannot be set up, or goes on no more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// A ring order outside 10..=20.
    Order(u16),
    /// Both rings would take the control page's slot of this order.
    SameSlot(u16),
    /// Rings in pages of their own need more grant refs than fit.
    TooManyGrants(usize),
    /// Memory given for a ring or the control page is too small.
    TooSmall { need: usize, have: usize },
    /// Memory for a ring in pages of its own was not given (or was given
    /// for a ring that lives in the control page).
    Pages,
    /// The peer's index claims more than its ring holds: the peer is
    /// broken or hostile, and the channel is not used again.
    Corrupt { prod: u32, cons: u32, size: u32 },
    /// The peer has gone (its live byte says so).
    PeerGone,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Order(o) => write!(f, "ring order {o} is outside {MIN_ORDER}..={MAX_ORDER}"),
            Error::SameSlot(o) => write!(f, "both rings of order {o} would share the control page's slot"),
            Error::TooManyGrants(n) => write!(f, "{n} grant refs do not fit in the control page"),
            Error::TooSmall { need, have } => write!(f, "shared memory of {have} bytes, {need} needed"),
            Error::Pages => f.write_str("a ring's own pages are missing, or given for a ring in the control page"),
            Error::Corrupt { prod, cons, size } => write!(
                f,
                "the peer's indices (prod {prod}, cons {cons}) claim more than the ring's {size} bytes"
            ),
            Error::PeerGone => f.write_str("the peer has closed the channel"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_outside_the_range_or_sharing_a_slot_are_refused() {
        assert_eq!(placements(9, 11), Err(Error::Order(9)));
        assert_eq!(placements(10, 21), Err(Error::Order(21)));
        assert_eq!(placements(10, 10), Err(Error::SameSlot(10)));
        assert_eq!(placements(11, 11), Err(Error::SameSlot(11)));
        assert_eq!(
            placements(10, 11),
            Ok((
                Placement::InControlPage(1024),
                Placement::InControlPage(2048)
            ))
        );
        assert_eq!(
            placements(12, 14),
            Ok((Placement::OwnPages(1), Placement::OwnPages(4)))
        );
        // 256 grant refs run past a ring at offset 1024, not one at 2048.
        assert_eq!(placements(20, 10), Err(Error::TooManyGrants(256)));
        assert!(placements(20, 11).is_ok());
        assert!(placements(20, 20).is_ok());
    }

    #[test]
    fn regions_put_own_pages_after_the_control_page() {
        let small = Region::of(10, 11).unwrap();
        assert_eq!(
            (small.left_pages, small.right_pages, small.len),
            (None, None, 4096)
        );
        let big = Region::of(12, 14).unwrap();
        assert_eq!(big.left_pages, Some(4096));
        assert_eq!(big.right_pages, Some(8192));
        assert_eq!(big.len, 8192 + 16384);
        let mixed = Region::of(11, 13).unwrap();
        assert_eq!((mixed.left_pages, mixed.right_pages), (None, Some(4096)));
        assert_eq!(mixed.len, 4096 + 8192);
        let largest = Region::of(20, 20).unwrap();
        assert_eq!(largest.len, 4096 + (2 << 20));
        assert_eq!(Region::of(10, 10), Err(Error::SameSlot(10)));
    }
}
