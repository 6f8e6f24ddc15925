//! Xen's shared-ring protocol (`io/ring.h`) on one page: a 64-byte header
//! (request and response producers, and the event indices that say when the
//! other end wants a notification), then `SIZE` slots of `SLOT` bytes that
//! requests and responses share. The front end makes requests and consumes
//! responses; the back end the other way round. Each end keeps its private
//! indices here and reads the other's from the page, never trusting them:
//! an index that claims more than the protocol allows is ignored.
//!
//! The page is shared memory another domain writes at any time, so it is
//! only ever touched through volatile accesses ordered by fences, and a
//! ring holds a raw pointer to it rather than a reference.

use core::marker::PhantomData;
use core::mem::{offset_of, size_of};
use core::sync::atomic::{fence, Ordering};

use crate::defs::SringHeader;

pub const PAGE_SIZE: usize = 4096;
const HEADER: usize = size_of::<SringHeader>();

/// The shared page, and the accesses both ends make to it.
struct Page<const SIZE: usize, const SLOT: usize> {
    base: *mut u8,
}

impl<const SIZE: usize, const SLOT: usize> Page<SIZE, SLOT> {
    const FITS: () = assert!(SIZE.is_power_of_two() && HEADER + SIZE * SLOT <= PAGE_SIZE);

    fn index(&self, field: usize) -> u32 {
        // SAFETY: `field` is the offset of a u32 in the header, inside the
        // page `base` points at (`Ring::new`'s contract).
        unsafe { (self.base.add(field) as *const u32).read_volatile() }
    }

    fn set_index(&self, field: usize, value: u32) {
        // SAFETY: as in `index`.
        unsafe { (self.base.add(field) as *mut u32).write_volatile(value) }
    }

    fn slot<T: Copy>(&self, index: u32) -> *mut T {
        const { assert!(size_of::<T>() <= SLOT) };
        // SAFETY: the slot lies inside the page: HEADER + SIZE * SLOT fits
        // (FITS), and `index % SIZE` < SIZE.
        unsafe { self.base.add(HEADER + (index as usize % SIZE) * SLOT) as *mut T }
    }

    fn read<T: Copy>(&self, index: u32) -> T {
        // SAFETY: `slot` is in the page and may be unaligned for T.
        unsafe { self.slot::<T>(index).read_unaligned() }
    }

    fn write<T: Copy>(&self, index: u32, value: T) {
        // SAFETY: as in `read`.
        unsafe { self.slot::<T>(index).write_unaligned(value) }
    }

    /// Publishes `new` as the producer at `prod`; true if the other end
    /// asked (through `event`) to be told of an entry in (old, new].
    fn publish(&self, prod: usize, event: usize, new: u32) -> bool {
        let old = self.index(prod);
        if old == new {
            return false;
        }
        fence(Ordering::Release);
        self.set_index(prod, new);
        fence(Ordering::SeqCst);
        let event = self.index(event);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }
}

const REQ_PROD: usize = offset_of!(SringHeader, req_prod);
const REQ_EVENT: usize = offset_of!(SringHeader, req_event);
const RSP_PROD: usize = offset_of!(SringHeader, rsp_prod);
const RSP_EVENT: usize = offset_of!(SringHeader, rsp_event);

/// The ring is full: the request was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// The end that makes requests (netfront, a vchan client).
pub struct FrontRing<const SIZE: usize, const SLOT: usize, Req: Copy, Rsp: Copy> {
    page: Page<SIZE, SLOT>,
    req_prod_pvt: u32,
    rsp_cons: u32,
    _types: PhantomData<(Req, Rsp)>,
}

impl<const SIZE: usize, const SLOT: usize, Req: Copy, Rsp: Copy> FrontRing<SIZE, SLOT, Req, Rsp> {
    /// Starts a ring on a zeroed page and asks for a notification of the
    /// first request and the first response.
    ///
    /// # Safety
    /// `page` points at a page-sized, zeroed allocation that lives as long
    /// as the ring and that, apart from the back end, nothing else touches.
    pub unsafe fn new(page: *mut u8) -> Self {
        let () = Page::<SIZE, SLOT>::FITS;
        let page = Page { base: page };
        page.set_index(REQ_EVENT, 1);
        page.set_index(RSP_EVENT, 1);
        FrontRing {
            page,
            req_prod_pvt: 0,
            rsp_cons: 0,
            _types: PhantomData,
        }
    }

    /// Slots free for requests: those not awaiting a response.
    pub fn free_requests(&self) -> usize {
        SIZE - self.req_prod_pvt.wrapping_sub(self.rsp_cons) as usize
    }

    /// Writes a request; it is seen by the back end at the next `push`.
    pub fn put_request(&mut self, request: Req) -> Result<(), Full> {
        if self.free_requests() == 0 {
            return Err(Full);
        }
        self.page.write(self.req_prod_pvt, request);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes the requests written; true if the back end must be told.
    pub fn push(&mut self) -> bool {
        self.page.publish(REQ_PROD, REQ_EVENT, self.req_prod_pvt)
    }

    /// Responses waiting. A back end that claims more responses than
    /// requests are outstanding is not believed: none are taken.
    pub fn responses(&self) -> usize {
        let prod = self.page.index(RSP_PROD);
        fence(Ordering::Acquire);
        let waiting = prod.wrapping_sub(self.rsp_cons);
        let outstanding = self.req_prod_pvt.wrapping_sub(self.rsp_cons);
        if waiting > outstanding {
            0
        } else {
            waiting as usize
        }
    }

    pub fn take_response(&mut self) -> Option<Rsp> {
        if self.responses() == 0 {
            return None;
        }
        let response = self.page.read(self.rsp_cons);
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Some(response)
    }

    /// Asks to be told of the next response. Check `responses` afterwards:
    /// one may have come before the request was seen.
    pub fn arm(&self) {
        self.page
            .set_index(RSP_EVENT, self.rsp_cons.wrapping_add(1));
        fence(Ordering::SeqCst);
    }
}

/// The end that serves requests (netback's side; a vchan server).
pub struct BackRing<const SIZE: usize, const SLOT: usize, Req: Copy, Rsp: Copy> {
    page: Page<SIZE, SLOT>,
    req_cons: u32,
    rsp_prod_pvt: u32,
    _types: PhantomData<(Req, Rsp)>,
}

impl<const SIZE: usize, const SLOT: usize, Req: Copy, Rsp: Copy> BackRing<SIZE, SLOT, Req, Rsp> {
    /// Attaches to a ring the front end started.
    ///
    /// # Safety
    /// As for [`FrontRing::new`], with the front end as the other party.
    pub unsafe fn attach(page: *mut u8) -> Self {
        let () = Page::<SIZE, SLOT>::FITS;
        BackRing {
            page: Page { base: page },
            req_cons: 0,
            rsp_prod_pvt: 0,
            _types: PhantomData,
        }
    }

    /// Requests waiting; a front end that claims more than the ring holds
    /// beyond the responses it has yet to take is not believed.
    pub fn requests(&self) -> usize {
        let prod = self.page.index(REQ_PROD);
        fence(Ordering::Acquire);
        let waiting = prod.wrapping_sub(self.req_cons);
        let room = SIZE as u32 - self.req_cons.wrapping_sub(self.rsp_prod_pvt);
        if waiting > room {
            0
        } else {
            waiting as usize
        }
    }

    pub fn take_request(&mut self) -> Option<Req> {
        if self.requests() == 0 {
            return None;
        }
        let request = self.page.read(self.req_cons);
        self.req_cons = self.req_cons.wrapping_add(1);
        Some(request)
    }

    /// Answers the oldest request taken and not yet answered.
    pub fn put_response(&mut self, response: Rsp) -> Result<(), Full> {
        if self.rsp_prod_pvt == self.req_cons {
            return Err(Full);
        }
        self.page.write(self.rsp_prod_pvt, response);
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes the responses written; true if the front end must be told.
    pub fn push(&mut self) -> bool {
        self.page.publish(RSP_PROD, RSP_EVENT, self.rsp_prod_pvt)
    }

    /// Asks to be told of the next request.
    pub fn arm(&self) {
        self.page
            .set_index(REQ_EVENT, self.req_cons.wrapping_add(1));
        fence(Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[repr(C, align(4096))]
    struct TestPage([u8; PAGE_SIZE]);

    type Front = FrontRing<8, 12, u64, u32>;
    type Back = BackRing<8, 12, u64, u32>;

    #[derive(Debug, Clone)]
    enum Op {
        Request(u64),
        PushRequests,
        Serve,
        PushResponses,
        Take,
        ArmFront,
        ArmBack,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<u64>().prop_map(Op::Request),
            Just(Op::PushRequests),
            Just(Op::Serve),
            Just(Op::PushResponses),
            Just(Op::Take),
            Just(Op::ArmFront),
            Just(Op::ArmBack),
        ]
    }

    proptest! {
        /// Whatever the two ends do, in any order: every request reaches the
        /// back end once and in order, every response comes back once and
        /// in order, the ring never takes more than it holds, and an end
        /// that asked to be told is told.
        #[test]
        fn both_ends_agree(ops in proptest::collection::vec(op(), 0..400)) {
            let mut page = Box::new(TestPage([0; PAGE_SIZE]));
            let base = page.0.as_mut_ptr();
            // SAFETY: the page is zeroed, page-sized, and outlives both ends.
            let (mut front, mut back) = unsafe { (Front::new(base), Back::attach(base)) };
            // Requests made and not yet served (pushed or not), how many of
            // them are pushed, and how many are not.
            let (mut sent, mut published, mut unpublished) = (VecDeque::new(), 0usize, 0usize);
            let mut served = VecDeque::new();
            let mut answered = VecDeque::new();
            let mut answered_published = 0usize;
            let (mut front_armed, mut back_armed) = (false, true);
            for op in ops {
                match op {
                    Op::Request(v) => {
                        let room = front.free_requests();
                        match front.put_request(v) {
                            Ok(()) => {
                                sent.push_back(v);
                                unpublished += 1;
                            }
                            Err(Full) => prop_assert_eq!(room, 0),
                        }
                    }
                    Op::PushRequests => {
                        let told = front.push();
                        if unpublished > 0 && back_armed {
                            prop_assert!(told, "the back end asked to be told");
                            back_armed = false;
                        }
                        published += unpublished;
                        unpublished = 0;
                    }
                    Op::Serve => {
                        let got = back.take_request();
                        if published > 0 {
                            prop_assert_eq!(got, sent.pop_front());
                            served.extend(got);
                            published -= 1;
                        } else {
                            prop_assert_eq!(got, None);
                        }
                    }
                    Op::PushResponses => {
                        while let Some(request) = served.pop_front() {
                            back.put_response(request as u32).unwrap();
                            answered.push_back(request as u32);
                        }
                        let new = answered.len() - answered_published;
                        let told = back.push();
                        if new > 0 && front_armed {
                            prop_assert!(told, "the front end asked to be told");
                            front_armed = false;
                        }
                        answered_published = answered.len();
                    }
                    Op::Take => {
                        let got = front.take_response();
                        if answered_published > 0 {
                            prop_assert_eq!(got, answered.pop_front());
                            answered_published -= 1;
                        } else {
                            prop_assert_eq!(got, None);
                        }
                    }
                    Op::ArmFront => {
                        front.arm();
                        front_armed = front.responses() == 0;
                    }
                    Op::ArmBack => {
                        back.arm();
                        back_armed = back.requests() == 0;
                    }
                }
                prop_assert!(front.free_requests() <= 8);
            }
        }

        /// A back end that writes nonsense producer indices gets no response
        /// taken beyond what was asked for.
        #[test]
        fn a_lying_back_end_is_not_believed(asked in 0usize..8, claimed in any::<u32>()) {
            let mut page = Box::new(TestPage([0; PAGE_SIZE]));
            // SAFETY: as above.
            let mut front = unsafe { Front::new(page.0.as_mut_ptr()) };
            for i in 0..asked {
                front.put_request(i as u64).unwrap();
            }
            front.push();
            page.0[RSP_PROD..RSP_PROD + 4].copy_from_slice(&claimed.to_ne_bytes());
            let mut taken = 0;
            while front.take_response().is_some() {
                taken += 1;
            }
            prop_assert!(taken <= asked);
            prop_assert!(claimed as usize <= asked || taken == 0);
        }

        /// A front end that claims more requests than the ring can hold gets
        /// none served.
        #[test]
        fn a_lying_front_end_is_not_believed(claimed in 9u32..) {
            let mut page = Box::new(TestPage([0; PAGE_SIZE]));
            // SAFETY: as above.
            let mut back = unsafe { Back::attach(page.0.as_mut_ptr()) };
            page.0[REQ_PROD..REQ_PROD + 4].copy_from_slice(&claimed.to_ne_bytes());
            prop_assert_eq!(back.requests(), 0);
            prop_assert!(back.take_request().is_none());
        }
    }
}
