//! Xen's hypercalls as the platform uses them: a sub-command and its
//! argument structure. How a call reaches Xen is the architecture's
//! (`x86_64/hypercall.rs`: the hypercall page; `aarch64/hypercall.rs`: `hvc`).

use jitsu_xen_abi::defs::nr;

/// A hypercall whose second argument points at `arg` (most of them: a
/// sub-command and its argument structure).
pub fn op<T>(nr: usize, cmd: usize, arg: &mut T) -> i64 {
    // SAFETY: `arg` is a live, exclusively borrowed structure for the whole
    // call; callers pass the structure the sub-command documents.
    unsafe { super::arch::hypercall::call3(nr, cmd as u64, arg as *mut T as u64, 0) }
}

pub fn sched_op<T>(cmd: usize, arg: &mut T) -> i64 {
    op(nr::SCHED_OP, cmd, arg)
}

pub fn event_channel_op<T>(cmd: usize, arg: &mut T) -> i64 {
    op(nr::EVENT_CHANNEL_OP, cmd, arg)
}

pub fn memory_op<T>(cmd: usize, arg: &mut T) -> i64 {
    op(nr::MEMORY_OP, cmd, arg)
}

pub fn hvm_op<T>(cmd: usize, arg: &mut T) -> i64 {
    op(nr::HVM_OP, cmd, arg)
}

/// A grant table operation on one structure.
pub fn grant_table_op<T>(cmd: usize, arg: &mut T) -> i64 {
    // SAFETY: as in `op`; the count is 1, and `arg` is one structure.
    unsafe {
        super::arch::hypercall::call3(nr::GRANT_TABLE_OP, cmd as u64, arg as *mut T as u64, 1)
    }
}
