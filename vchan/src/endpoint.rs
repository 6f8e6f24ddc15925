//! One end of a vchan. The server lays the control page out and reads the
//! left ring; the client attaches to what the server laid out and reads the
//! right ring. Each end keeps its own index (the writer's `prod`, the
//! reader's `cons`) privately and only publishes it: a peer that scribbles
//! it cannot move our position, only be caught lying about its own.
//!
//! Notifications are asked for, never assumed: before waiting for data (or
//! space), an end sets the matching bit in the byte its peer checks, then
//! looks again; after writing (or reading), an end clears its own byte's
//! bit and signals the peer only if the bit was set. The signal itself (an
//! eventfd on KVM, an event channel on Xen) is the caller's: a
//! [`Transfer`] says when one is due.

use core::sync::atomic::{fence, Ordering};

use crate::layout::{self, Error, Placement, PAGE_SIZE};
use crate::shared::Shared;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// How the peer stands, by its live byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// The client has not attached yet (only a server sees this).
    NotYet,
    Connected,
    Gone,
}

/// What a read or write moved, and whether the peer asked to be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[must_use = "the peer may be waiting for a notification"]
pub struct Transfer {
    pub bytes: usize,
    pub notify: bool,
}

/// One direction: its indices in the control page and its bytes.
#[derive(Debug)]
struct Ring {
    cons_at: usize,
    prod_at: usize,
    data: Shared,
    size: u32,
    /// Our own index: `prod` if we write this ring, `cons` if we read it.
    mine: u32,
}

impl Ring {
    /// The left ring (the client writes it) or the right one; our index
    /// starts at 0, as on a fresh page (`attach` takes the page's).
    fn new(left: bool, order: u16, data: Shared) -> Ring {
        let (cons_at, prod_at) = if left {
            (layout::LEFT_CONS, layout::LEFT_PROD)
        } else {
            (layout::RIGHT_CONS, layout::RIGHT_PROD)
        };
        Ring {
            cons_at,
            prod_at,
            data,
            size: 1 << order,
            mine: 0,
        }
    }

    /// Bytes waiting to be read: the peer's `prod` against our `cons`.
    fn readable(&self, ctrl: &Shared) -> Result<u32, Error> {
        let prod = ctrl.u32_at(self.prod_at).load(Ordering::Acquire);
        let ready = prod.wrapping_sub(self.mine);
        if ready > self.size {
            return Err(Error::Corrupt {
                prod,
                cons: self.mine,
                size: self.size,
            });
        }
        Ok(ready)
    }

    /// Room to write: the ring less what the peer has not consumed.
    fn writable(&self, ctrl: &Shared) -> Result<u32, Error> {
        let cons = ctrl.u32_at(self.cons_at).load(Ordering::Acquire);
        let used = self.mine.wrapping_sub(cons);
        if used > self.size {
            return Err(Error::Corrupt {
                prod: self.mine,
                cons,
                size: self.size,
            });
        }
        Ok(self.size - used)
    }

    /// The ring's bytes for `n` bytes from our index on: at most two
    /// pieces, split at the ring's end, as (offset, length).
    fn pieces(&self, n: usize) -> [(usize, usize); 2] {
        let start = (self.mine & (self.size - 1)) as usize;
        let first = n.min(self.size as usize - start);
        [(start, first), (0, n - first)]
    }

    /// Copies `buf.len()` bytes (all readable) out, and moves our index.
    fn take(&mut self, buf: &mut [u8]) {
        let mut done = 0;
        for (at, len) in self.pieces(buf.len()) {
            self.data.copy_out(at, &mut buf[done..done + len]);
            done += len;
        }
        self.mine = self.mine.wrapping_add(buf.len() as u32);
    }

    /// Copies `data` (which fits) in, and moves our index.
    fn put(&mut self, data: &[u8]) {
        let mut done = 0;
        for (at, len) in self.pieces(data.len()) {
            self.data.copy_in(at, &data[done..done + len]);
            done += len;
        }
        self.mine = self.mine.wrapping_add(data.len() as u32);
    }
}

#[derive(Debug)]
pub struct Endpoint {
    ctrl: Shared,
    role: Role,
    read: Ring,
    write: Ring,
}

impl Endpoint {
    /// Lays out a fresh control page as the server, with a left ring (the
    /// server reads it) of order `left_order` and a right one of
    /// `right_order`. A ring of order 12 or more lives in the pages given
    /// for it (`left_pages`, `right_pages`), which must hold it.
    pub fn serve(
        ctrl: Shared,
        left_order: u16,
        right_order: u16,
        left_pages: Option<Shared>,
        right_pages: Option<Shared>,
    ) -> Result<Endpoint, Error> {
        rings(&ctrl, left_order, right_order, left_pages, right_pages)?;
        Endpoint::lay_out(&ctrl, left_order, right_order)?;
        Endpoint::open_server(ctrl, left_pages, right_pages)
    }

    /// Lays a fresh control page out for a server: orders, indices and
    /// flags; the server's live byte says connected, the client's not yet.
    /// A monitor does this for a guest that is not running yet (which then
    /// takes the page over with [`Endpoint::open_server`]).
    pub fn lay_out(ctrl: &Shared, left_order: u16, right_order: u16) -> Result<(), Error> {
        ctrl.part(0, PAGE_SIZE).ok_or(Error::TooSmall {
            need: PAGE_SIZE,
            have: ctrl.len(),
        })?;
        layout::placements(left_order, right_order)?;
        // Indices, flags and grants zero; the rings' bytes need not be.
        ctrl.part(0, layout::GRANTS)
            .expect("inside the page")
            .zero();
        ctrl.u16_at(layout::LEFT_ORDER)
            .store(left_order, Ordering::Relaxed);
        ctrl.u16_at(layout::RIGHT_ORDER)
            .store(right_order, Ordering::Relaxed);
        ctrl.u8_at(layout::CLI_LIVE)
            .store(layout::NOT_YET, Ordering::Relaxed);
        // The server waits for the client's first bytes.
        ctrl.u8_at(layout::CLI_NOTIFY)
            .store(layout::NOTIFY_WRITE, Ordering::Relaxed);
        ctrl.u8_at(layout::SRV_LIVE)
            .store(layout::CONNECTED, Ordering::Release);
        Ok(())
    }

    /// Becomes the server of a control page laid out for it (by
    /// [`Endpoint::lay_out`], here or in a monitor), taking the orders it
    /// names (checked) and the indices as they stand: a client may have
    /// written already.
    pub fn open_server(
        ctrl: Shared,
        left_pages: Option<Shared>,
        right_pages: Option<Shared>,
    ) -> Result<Endpoint, Error> {
        let region = layout::region_of(&ctrl)?;
        let (left, right) = rings(
            &ctrl,
            region.left_order,
            region.right_order,
            left_pages,
            right_pages,
        )?;
        if ctrl.u8_at(layout::SRV_LIVE).load(Ordering::Acquire) != layout::CONNECTED {
            return Err(Error::PeerGone);
        }
        let mut read = Ring::new(true, region.left_order, left);
        let mut write = Ring::new(false, region.right_order, right);
        read.mine = ctrl.u32_at(read.cons_at).load(Ordering::Acquire);
        write.mine = ctrl.u32_at(write.prod_at).load(Ordering::Acquire);
        Ok(Endpoint {
            ctrl,
            role: Role::Server,
            read,
            write,
        })
    }

    /// Attaches as the client to a control page a server laid out, taking
    /// the orders it wrote (checked) and the pages of rings that live in
    /// pages of their own.
    pub fn attach(
        ctrl: Shared,
        left_pages: Option<Shared>,
        right_pages: Option<Shared>,
    ) -> Result<Endpoint, Error> {
        if ctrl.len() < PAGE_SIZE {
            return Err(Error::TooSmall {
                need: PAGE_SIZE,
                have: ctrl.len(),
            });
        }
        if ctrl.u8_at(layout::SRV_LIVE).load(Ordering::Acquire) != layout::CONNECTED {
            return Err(Error::PeerGone);
        }
        let left_order = ctrl.u16_at(layout::LEFT_ORDER).load(Ordering::Relaxed);
        let right_order = ctrl.u16_at(layout::RIGHT_ORDER).load(Ordering::Relaxed);
        let (left, right) = rings(&ctrl, left_order, right_order, left_pages, right_pages)?;
        // The client waits for the server's first bytes.
        ctrl.u8_at(layout::SRV_NOTIFY)
            .fetch_or(layout::NOTIFY_WRITE, Ordering::SeqCst);
        ctrl.u8_at(layout::CLI_LIVE)
            .store(layout::CONNECTED, Ordering::Release);
        let mut read = Ring::new(false, right_order, right);
        let mut write = Ring::new(true, left_order, left);
        // A reader's own index is `cons`, a writer's `prod`.
        read.mine = ctrl.u32_at(read.cons_at).load(Ordering::Acquire);
        write.mine = ctrl.u32_at(write.prod_at).load(Ordering::Acquire);
        Ok(Endpoint {
            ctrl,
            role: Role::Client,
            read,
            write,
        })
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The peer, by its live byte.
    pub fn peer(&self) -> Peer {
        let at = match self.role {
            Role::Server => layout::CLI_LIVE,
            Role::Client => layout::SRV_LIVE,
        };
        match self.ctrl.u8_at(at).load(Ordering::Acquire) {
            layout::NOT_YET if self.role == Role::Server => Peer::NotYet,
            layout::CONNECTED => Peer::Connected,
            _ => Peer::Gone,
        }
    }

    /// Bytes ready to read now.
    pub fn readable(&self) -> Result<usize, Error> {
        self.read.readable(&self.ctrl).map(|n| n as usize)
    }

    /// Bytes that can be written now.
    pub fn writable(&self) -> Result<usize, Error> {
        self.write.writable(&self.ctrl).map(|n| n as usize)
    }

    /// Reads what is there, up to `buf.len()` bytes.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<Transfer, Error> {
        let n = buf.len().min(self.read.readable(&self.ctrl)? as usize);
        if n == 0 {
            return Ok(Transfer::default());
        }
        self.read.take(&mut buf[..n]);
        self.ctrl
            .u32_at(self.read.cons_at)
            .store(self.read.mine, Ordering::Release);
        Ok(Transfer {
            bytes: n,
            notify: self.take_request(layout::NOTIFY_READ),
        })
    }

    /// Writes as much of `data` as fits.
    pub fn write(&mut self, data: &[u8]) -> Result<Transfer, Error> {
        if self.peer() == Peer::Gone {
            return Err(Error::PeerGone);
        }
        let n = data.len().min(self.write.writable(&self.ctrl)? as usize);
        if n == 0 {
            return Ok(Transfer::default());
        }
        self.write.put(&data[..n]);
        self.ctrl
            .u32_at(self.write.prod_at)
            .store(self.write.mine, Ordering::Release);
        Ok(Transfer {
            bytes: n,
            notify: self.take_request(layout::NOTIFY_WRITE),
        })
    }

    /// Before waiting for data: asks the peer to signal its next write,
    /// then looks again (data written between the first look and the ask
    /// would otherwise come with no signal). The bytes ready now.
    pub fn await_data(&self) -> Result<usize, Error> {
        self.ask(layout::NOTIFY_WRITE);
        self.readable()
    }

    /// Before waiting for room: asks the peer to signal its next read,
    /// then looks again. The bytes that can be written now.
    pub fn await_space(&self) -> Result<usize, Error> {
        self.ask(layout::NOTIFY_READ);
        self.writable()
    }

    /// Says we are gone. The peer should be signalled (always).
    pub fn close(&mut self) {
        mark_gone(&self.ctrl, self.role);
    }

    /// Sets `bit` in the byte the peer checks after it moves data.
    fn ask(&self, bit: u8) {
        self.ctrl
            .u8_at(self.peer_checks())
            .fetch_or(bit, Ordering::SeqCst);
        // The ask is visible before we read the indices again.
        fence(Ordering::SeqCst);
    }

    /// Clears `bit` in the byte we check: whether the peer had asked.
    fn take_request(&self, bit: u8) -> bool {
        // Our index is visible before we decide whether to signal.
        fence(Ordering::SeqCst);
        let previous = self
            .ctrl
            .u8_at(self.we_check())
            .fetch_and(!bit, Ordering::SeqCst);
        previous & bit != 0
    }

    /// The notify byte we check: the peer's requests of us.
    fn we_check(&self) -> usize {
        match self.role {
            Role::Server => layout::SRV_NOTIFY,
            Role::Client => layout::CLI_NOTIFY,
        }
    }

    fn peer_checks(&self) -> usize {
        match self.role {
            Role::Server => layout::CLI_NOTIFY,
            Role::Client => layout::SRV_NOTIFY,
        }
    }
}

/// Marks `role`'s end gone in the control page: what a monitor does for
/// its guest once it has stopped, or for a peer whose monitor went away,
/// so that the other end sees end-of-stream.
pub fn mark_gone(ctrl: &Shared, role: Role) {
    let at = match role {
        Role::Server => layout::SRV_LIVE,
        Role::Client => layout::CLI_LIVE,
    };
    ctrl.u8_at(at).store(layout::GONE, Ordering::Release);
}

/// The two rings' bytes for `left_order` and `right_order`: parts of the
/// control page, or the pages given, which must hold them.
fn rings(
    ctrl: &Shared,
    left_order: u16,
    right_order: u16,
    left_pages: Option<Shared>,
    right_pages: Option<Shared>,
) -> Result<(Shared, Shared), Error> {
    let (left, right) = layout::placements(left_order, right_order)?;
    Ok((
        ring_bytes(ctrl, left, left_order, left_pages)?,
        ring_bytes(ctrl, right, right_order, right_pages)?,
    ))
}

fn ring_bytes(
    ctrl: &Shared,
    placement: Placement,
    order: u16,
    pages: Option<Shared>,
) -> Result<Shared, Error> {
    let size = 1usize << order;
    let too_small = |have| Error::TooSmall { need: size, have };
    match (placement, pages) {
        (Placement::InControlPage(at), None) => ctrl
            .part(at, size)
            .ok_or(too_small(ctrl.len().saturating_sub(at))),
        (Placement::OwnPages(_), Some(pages)) => pages.part(0, size).ok_or(too_small(pages.len())),
        _ => Err(Error::Pages),
    }
}
