//! arm64: libxl boots an arm64 Linux `Image` (our ELF, flattened by
//! `objcopy -O binary`; the header is in `start.rs`) at EL1 with a device
//! tree; hypercalls are `hvc`; time is the generic timer's virtual count,
//! and the guest blocks in `wfi` with the GIC set up just enough for the
//! event channel and timer interrupts to wake it (`gic.rs`).

mod gic;
pub(super) mod hypercall;
mod start;
pub(super) mod time;

pub(crate) use time::counter;
