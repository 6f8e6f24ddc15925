//! The guest's devices: one small file each.

pub mod console;
pub mod net;
