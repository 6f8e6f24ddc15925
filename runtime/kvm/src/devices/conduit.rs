//! The conduit device: the guest's Conduit channels, each in a slot of the
//! window above its memory (`jitsu_abi::conduit`). The broker thread does
//! the rendezvous and hands channels over; this device, on the vCPU
//! thread, puts a channel's memory into its slot (a KVM memory slot of its
//! own), tells the guest, signals peers and reports their signals.
//!
//! Nothing here closes a descriptor or unmaps a channel (the vCPU thread's
//! filter allows neither): a channel the guest is done with goes back to
//! the broker, which drops it.

use std::collections::VecDeque;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use jitsu_abi::conduit::{self as abi, SLOTS, SLOT_SIZE, WINDOW_BASE};
use jitsu_abi::ConduitEvent;
use jitsu_conduit::{BrokerHandle, Channel, Delivery, Reason};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;

/// KVM memory slot of conduit slot 0 (slot 0 is guest memory).
const FIRST_MEMSLOT: u32 = 1;

enum Slot {
    Free,
    /// A connect the broker has not answered yet.
    Connecting,
    Open(Arc<Channel>),
}

/// Why a guest's conduit call is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum CallError {
    /// A name or port that is not a label, orders no channel can have.
    Invalid,
    /// Not this guest's name, or a slot that is not open.
    Denied,
    /// No free slot.
    Busy,
}

pub struct ConduitDevice {
    broker: BrokerHandle,
    slots: Vec<Slot>,
    listening: bool,
    /// Channels accepted before the guest listened.
    backlog: VecDeque<Arc<Channel>>,
    events: VecDeque<ConduitEvent>,
    /// Shared with the NIC: when the guest last did anything.
    activity: Arc<AtomicU64>,
    /// The open channels' ring indices, as last seen.
    fingerprint: u64,
}

impl ConduitDevice {
    pub fn new(broker: BrokerHandle, activity: Arc<AtomicU64>) -> ConduitDevice {
        ConduitDevice {
            broker,
            slots: (0..SLOTS).map(|_| Slot::Free).collect(),
            listening: false,
            backlog: VecDeque::new(),
            events: VecDeque::new(),
            activity,
            fingerprint: 0,
        }
    }

    fn touch(&self) {
        self.activity
            .store(jitsu_runtime::clock::now_ns(), Ordering::Relaxed);
    }

    /// CONDUIT_LISTEN for `name`.
    pub fn listen(&mut self, vm: &VmFd, name: &[u8]) -> Result<(), CallError> {
        if name != self.broker.name().as_bytes() {
            return Err(CallError::Denied);
        }
        self.listening = true;
        while let Some(channel) = self.backlog.pop_front() {
            self.open_accepted(vm, channel);
        }
        Ok(())
    }

    /// CONDUIT_CONNECT: the slot reserved for it.
    pub fn connect(&mut self, server: &[u8], port: &[u8], orders: u64) -> Result<u32, CallError> {
        let label = |b: &[u8]| {
            std::str::from_utf8(b)
                .ok()
                .filter(|s| jitsu_vchan::rendezvous::valid_label(s))
                .map(String::from)
        };
        let (Some(server), Some(port)) = (label(server), label(port)) else {
            return Err(CallError::Invalid);
        };
        let order = |bits: u64| match (bits & 0xffff) as u16 {
            0 => abi::DEFAULT_ORDER,
            n => n,
        };
        let (left, right) = (order(orders), order(orders >> 16));
        let fits = jitsu_vchan::Region::of(left, right).is_ok_and(|r| r.len as u64 <= SLOT_SIZE);
        if !fits || orders >> 32 != 0 {
            return Err(CallError::Invalid);
        }
        let slot = self.free_slot().ok_or(CallError::Busy)?;
        self.slots[slot] = Slot::Connecting;
        self.broker
            .connect(slot as u32, &server, &port, left, right);
        self.touch();
        Ok(slot as u32)
    }

    /// CONDUIT_CLOSE of `slot`: it leaves the window and goes back to the
    /// broker; the peer is told.
    pub fn close(&mut self, vm: &VmFd, slot: u64) -> Result<(), CallError> {
        let index = usize::try_from(slot).map_err(|_| CallError::Denied)?;
        match self.slots.get(index) {
            Some(Slot::Open(_)) => {}
            _ => return Err(CallError::Denied),
        }
        let Slot::Open(channel) = std::mem::replace(&mut self.slots[index], Slot::Free) else {
            unreachable!("checked above");
        };
        unmap(vm, index);
        channel.hang_up();
        self.broker.release(channel);
        self.touch();
        tracing::debug!(slot, "conduit slot closed by the guest");
        Ok(())
    }

    /// Fills `out` with waiting events; how many.
    pub fn take_events(&mut self, vm: &VmFd, out: &mut [ConduitEvent]) -> usize {
        self.collect(vm);
        let n = out.len().min(self.events.len());
        for (slot, event) in out.iter_mut().zip(self.events.drain(..n)) {
            *slot = event;
        }
        n
    }

    /// Signals the peers of the open slots in `mask`.
    pub fn signal(&mut self, mask: u64) {
        if mask == 0 {
            return;
        }
        for (index, slot) in self.slots.iter().enumerate() {
            if let Slot::Open(channel) = slot {
                if mask & (1 << index) != 0 {
                    channel.signal_peer();
                }
            }
        }
        self.touch();
    }

    /// Whether an event waits without asking the kernel.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The descriptors a poll waits on: the broker's, then each open
    /// slot's wake-up (with the slot).
    pub fn poll_fds(&self) -> (BorrowedFd<'_>, Vec<(usize, BorrowedFd<'_>)>) {
        let wakes = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Slot::Open(channel) => Some((i, channel.wake_fd())),
                _ => None,
            })
            .collect();
        (self.broker.ready_fd(), wakes)
    }

    /// After a poll: the slots whose peers signalled (their wake-ups
    /// drained), and whether events wait.
    pub fn after_poll(&mut self, vm: &VmFd, broker_ready: bool, woken: &[usize]) -> (u64, bool) {
        let mut signalled = 0u64;
        for &index in woken {
            if let Some(Slot::Open(channel)) = self.slots.get(index) {
                if channel.take_wake() {
                    signalled |= 1 << index;
                }
            }
        }
        if broker_ready {
            self.collect(vm);
        }
        if signalled != 0 {
            self.touch();
        }
        tracing::trace!(signalled, woken = ?woken, broker_ready, "conduit poll");
        (signalled, self.has_events())
    }

    /// Whether any open channel's indices moved since the last look (a
    /// stream that never waits signals nobody, and must still count as
    /// activity for the idle stop).
    pub fn moved(&mut self) -> bool {
        let now = self
            .slots
            .iter()
            .filter_map(|s| match s {
                Slot::Open(channel) => Some(channel),
                _ => None,
            })
            .map(|c| jitsu_vchan::layout::indices(&c.memory().parts().ctrl))
            .fold(0u64, |acc, i| {
                i.iter()
                    .fold(acc, |a, &x| a.wrapping_mul(31).wrapping_add(x as u64))
            });
        let moved = now != self.fingerprint;
        self.fingerprint = now;
        if moved {
            self.touch();
        }
        moved
    }

    /// Takes what the broker delivered.
    fn collect(&mut self, vm: &VmFd) {
        while let Some(delivery) = self.broker.take() {
            tracing::debug!(?delivery, "conduit delivery");
            match delivery {
                Delivery::Accepted(channel) if !self.listening => self.backlog.push_back(channel),
                Delivery::Accepted(channel) => self.open_accepted(vm, channel),
                Delivery::Connected { slot, channel } => self.open_connected(vm, slot, channel),
                Delivery::Refused { slot, reason } => self.refused(slot, reason),
            }
            self.touch();
        }
    }

    fn open_accepted(&mut self, vm: &VmFd, channel: Arc<Channel>) {
        let Some(index) = self.free_slot() else {
            tracing::warn!(peer = channel.peer, "no free conduit slot: hanging up");
            return self.give_back(channel);
        };
        if self.map(vm, index, channel.clone()).is_err() {
            return self.give_back(channel);
        }
        self.events
            .push_back(event(index, abi::EVENT_ACCEPTED, 0, &channel));
    }

    fn open_connected(&mut self, vm: &VmFd, slot: u32, channel: Arc<Channel>) {
        let index = slot as usize;
        if !matches!(self.slots.get(index), Some(Slot::Connecting)) {
            // Asked for by a guest that is gone (a VM of an earlier parking).
            return self.give_back(channel);
        }
        self.slots[index] = Slot::Free;
        if self.map(vm, index, channel.clone()).is_err() {
            self.events.push_back(refusal(index, abi::REFUSED_BUSY));
            return self.give_back(channel);
        }
        self.events
            .push_back(event(index, abi::EVENT_CONNECTED, 0, &channel));
    }

    fn refused(&mut self, slot: u32, reason: Reason) {
        let index = slot as usize;
        if matches!(self.slots.get(index), Some(Slot::Connecting)) {
            self.slots[index] = Slot::Free;
            self.events.push_back(refusal(index, reason as u32));
        }
    }

    fn give_back(&self, channel: Arc<Channel>) {
        channel.hang_up();
        self.broker.release(channel);
    }

    fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(|s| matches!(s, Slot::Free))
    }

    /// Puts `channel`'s memory into slot `index` of the window.
    fn map(
        &mut self,
        vm: &VmFd,
        index: usize,
        channel: Arc<Channel>,
    ) -> Result<(), kvm_ioctls::Error> {
        let memory = channel.memory();
        let region = kvm_userspace_memory_region {
            slot: FIRST_MEMSLOT + index as u32,
            guest_phys_addr: WINDOW_BASE + index as u64 * SLOT_SIZE,
            memory_size: (memory.len() as u64).min(SLOT_SIZE),
            userspace_addr: memory.host_address(),
            flags: 0,
        };
        // SAFETY: the mapping belongs to `channel`, which this slot keeps
        // alive until `unmap` takes it out of the VM (or the VM is gone:
        // VcpuState drops the VM before the devices).
        unsafe { vm.set_user_memory_region(region) }.inspect_err(|e| {
            tracing::warn!(%e, "mapping a conduit channel into the guest");
        })?;
        self.slots[index] = Slot::Open(channel);
        Ok(())
    }
}

/// Takes slot `index` out of the VM.
fn unmap(vm: &VmFd, index: usize) {
    let region = kvm_userspace_memory_region {
        slot: FIRST_MEMSLOT + index as u32,
        guest_phys_addr: WINDOW_BASE + index as u64 * SLOT_SIZE,
        memory_size: 0,
        userspace_addr: 0,
        flags: 0,
    };
    // SAFETY: a size of 0 deletes the slot; no memory is handed to KVM.
    if let Err(e) = unsafe { vm.set_user_memory_region(region) } {
        tracing::warn!(%e, "taking a conduit channel out of the guest");
    }
}

impl Drop for ConduitDevice {
    /// The guest is gone (this runs off the vCPU thread): every channel's
    /// peer is told, and the channels go back to the broker.
    fn drop(&mut self) {
        for slot in std::mem::take(&mut self.slots) {
            if let Slot::Open(channel) = slot {
                self.give_back(channel);
            }
        }
        while let Some(channel) = self.backlog.pop_front() {
            self.give_back(channel);
        }
    }
}

fn label(bytes: &str) -> ([u8; 64], u8) {
    let mut out = [0u8; 64];
    let len = bytes.len().min(abi::LABEL_MAX);
    out[..len].copy_from_slice(&bytes.as_bytes()[..len]);
    (out, len as u8)
}

fn event(index: usize, kind: u32, reason: u32, channel: &Channel) -> ConduitEvent {
    let (peer, peer_len) = label(&channel.peer);
    let (port, port_len) = label(&channel.port);
    ConduitEvent {
        slot: index as u32,
        kind,
        reason,
        size: channel.memory().len() as u32,
        peer_len,
        port_len,
        peer,
        port,
        ..ConduitEvent::default()
    }
}

fn refusal(index: usize, reason: u32) -> ConduitEvent {
    ConduitEvent {
        slot: index as u32,
        kind: abi::EVENT_REFUSED,
        reason,
        ..ConduitEvent::default()
    }
}
