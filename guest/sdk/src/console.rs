//! `print!` and `println!` on the platform's console (the task's stdout).

use core::fmt::{self, Write};

/// Formats into a small buffer and hands it to the platform a chunk at a
/// time: one exit (or ring notification) per chunk, not one per `write_str`.
pub struct Console {
    buf: [u8; 512],
    len: usize,
}

impl Console {
    pub const fn new() -> Console {
        Console {
            buf: [0; 512],
            len: 0,
        }
    }

    pub fn flush(&mut self) {
        if self.len > 0 {
            crate::platform::console_write(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl Default for Console {
    fn default() -> Self {
        Console::new()
    }
}

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for chunk in s.as_bytes().chunks(self.buf.len()) {
            if self.len + chunk.len() > self.buf.len() {
                self.flush();
            }
            self.buf[self.len..self.len + chunk.len()].copy_from_slice(chunk);
            self.len += chunk.len();
        }
        Ok(())
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.flush();
    }
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    let mut console = Console::new();
    let _ = console.write_fmt(args);
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
