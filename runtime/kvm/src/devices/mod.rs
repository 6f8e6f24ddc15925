//! The guest's devices: one small file each.

pub mod conduit;
pub mod console;
pub mod net;
