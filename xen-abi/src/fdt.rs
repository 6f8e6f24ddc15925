//! What an arm64 Xen domain learns from the device tree libxl hands it (x0
//! at entry): its RAM, its command line, the grant table's region, the
//! interrupt controller's frames and the two interrupts it waits on.
//!
//! A reader of its own rather than the `fdt` crate: that crate panics on a
//! tree without `/memory` or `/chosen` and on some malformed blobs, and a
//! guest can only report a panic, not refuse with a reason. Every read here
//! is bounds-checked; a tree that is not what libxl writes is an error.

use core::fmt;

const MAGIC: u32 = 0xd00d_feed;
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
const END: u32 = 9;
/// Interrupt specifier types (`interrupts` cells: type, number, flags).
const SPI: u32 = 0;
const PPI: u32 = 1;
/// How deep a path the reader follows; libxl's trees are two levels deep.
const MAX_DEPTH: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdtError {
    /// Not a flattened device tree (magic, sizes or offsets wrong).
    Header,
    /// The structure block ends mid-token or names strings outside its block.
    Truncated,
    /// A node or property the domain needs is missing or malformed.
    Missing(&'static str),
    /// The interrupt controller is not a GICv3 (the only one supported).
    NotGicV3,
}

impl fmt::Display for FdtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FdtError::Header => f.write_str("not a flattened device tree"),
            FdtError::Truncated => f.write_str("the device tree is truncated"),
            FdtError::Missing(what) => write!(f, "the device tree has no valid {what}"),
            FdtError::NotGicV3 => f.write_str("the interrupt controller is not a GICv3"),
        }
    }
}

/// A parsed tree: its structure and strings blocks.
#[derive(Clone, Copy)]
pub struct Fdt<'a> {
    structs: &'a [u8],
    strings: &'a [u8],
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let word = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([word[0], word[1], word[2], word[3]]))
}

/// The bytes up to (not including) the first NUL at or after `at`.
fn c_str(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let rest = bytes.get(at..)?;
    let len = rest.iter().position(|&b| b == 0)?;
    Some(&rest[..len])
}

/// The size of a tree whose header starts `bytes` (to know how much to read
/// from a bare pointer), or `None` if it is not a tree's header.
pub fn total_size(header: &[u8]) -> Option<usize> {
    (be32(header, 0)? == MAGIC).then_some(())?;
    usize::try_from(be32(header, 4)?).ok()
}

impl<'a> Fdt<'a> {
    pub fn new(blob: &'a [u8]) -> Result<Fdt<'a>, FdtError> {
        let field = |at| be32(blob, at).map(|v| v as usize).ok_or(FdtError::Header);
        let total = total_size(blob).ok_or(FdtError::Header)?;
        let (off_struct, off_strings) = (field(8)?, field(12)?);
        let (size_strings, size_struct) = (field(32)?, field(36)?);
        let blob = blob.get(..total).ok_or(FdtError::Header)?;
        let block = |off: usize, size: usize| {
            let end = off.checked_add(size).ok_or(FdtError::Header)?;
            blob.get(off..end).ok_or(FdtError::Header)
        };
        Ok(Fdt {
            structs: block(off_struct, size_struct)?,
            strings: block(off_strings, size_strings)?,
        })
    }

    /// The value of property `name` of the node at `path` (components
    /// matched on the name before any `@unit`; `&[]` is the root).
    pub fn property(&self, path: &[&str], name: &str) -> Result<Option<&'a [u8]>, FdtError> {
        let mut at = 0;
        let mut depth = 0usize;
        // How many leading components of `path` the current node matches.
        let mut matched = 0usize;
        loop {
            let token = be32(self.structs, at).ok_or(FdtError::Truncated)?;
            at += 4;
            match token {
                BEGIN_NODE => {
                    let full = c_str(self.structs, at).ok_or(FdtError::Truncated)?;
                    at = (at + full.len() + 1 + 3) & !3;
                    let node = full.split(|&b| b == b'@').next().unwrap_or(full);
                    // The root node (depth 0) has an empty name.
                    if depth > 0
                        && matched == depth - 1
                        && path.get(depth - 1).map(|c| c.as_bytes()) == Some(node)
                    {
                        matched = depth;
                    }
                    depth += 1;
                    if depth > MAX_DEPTH + 1 {
                        return Err(FdtError::Truncated);
                    }
                }
                END_NODE => {
                    depth = depth.checked_sub(1).ok_or(FdtError::Truncated)?;
                    matched = matched.min(depth.saturating_sub(1));
                    if depth == 0 {
                        return Ok(None);
                    }
                }
                PROP => {
                    let len = be32(self.structs, at).ok_or(FdtError::Truncated)? as usize;
                    let name_off = be32(self.structs, at + 4).ok_or(FdtError::Truncated)? as usize;
                    let value_at = at + 8;
                    let value = self
                        .structs
                        .get(value_at..value_at.checked_add(len).ok_or(FdtError::Truncated)?)
                        .ok_or(FdtError::Truncated)?;
                    at = (value_at + len + 3) & !3;
                    if depth == path.len() + 1 && matched == path.len() {
                        let prop = c_str(self.strings, name_off).ok_or(FdtError::Truncated)?;
                        if prop == name.as_bytes() {
                            return Ok(Some(value));
                        }
                    }
                }
                NOP => {}
                END => return Ok(None),
                _ => return Err(FdtError::Truncated),
            }
        }
    }

    fn cells(&self, path: &[&str], name: &str, default: u32) -> Result<usize, FdtError> {
        match self.property(path, name)? {
            Some(value) => match be32(value, 0) {
                Some(n @ 1..=2) => Ok(n as usize),
                _ => Err(FdtError::Missing("#address-cells/#size-cells")),
            },
            None => Ok(default as usize),
        }
    }

    /// The `index`th (address, size) pair of `path`'s `reg`, in the root's
    /// cell sizes (libxl puts every node with `reg` under the root).
    pub fn reg(
        &self,
        path: &[&str],
        index: usize,
        what: &'static str,
    ) -> Result<(u64, u64), FdtError> {
        let address_cells = self.cells(&[], "#address-cells", 2)?;
        let size_cells = self.cells(&[], "#size-cells", 1)?;
        let value = self.property(path, "reg")?.ok_or(FdtError::Missing(what))?;
        let pair = (address_cells + size_cells) * 4;
        let entry = value
            .get(index * pair..(index + 1) * pair)
            .ok_or(FdtError::Missing(what))?;
        let read = |cells: &[u8]| {
            cells.chunks(4).fold(0u64, |acc, c| {
                (acc << 32) | u64::from(be32(c, 0).unwrap_or(0))
            })
        };
        Ok((
            read(&entry[..address_cells * 4]),
            read(&entry[address_cells * 4..]),
        ))
    }

    /// The GIC interrupt ID of `path`'s `index`th interrupt (three cells each).
    pub fn interrupt(
        &self,
        path: &[&str],
        index: usize,
        what: &'static str,
    ) -> Result<u32, FdtError> {
        let value = self
            .property(path, "interrupts")?
            .ok_or(FdtError::Missing(what))?;
        let kind = be32(value, index * 12).ok_or(FdtError::Missing(what))?;
        let number = be32(value, index * 12 + 4).ok_or(FdtError::Missing(what))?;
        match kind {
            PPI if number < 16 => Ok(number + 16),
            SPI if number < 988 => Ok(number + 32),
            _ => Err(FdtError::Missing(what)),
        }
    }

    /// Whether `path`'s `compatible` list holds `name`.
    pub fn compatible(&self, path: &[&str], name: &str) -> Result<bool, FdtError> {
        Ok(self.property(path, "compatible")?.is_some_and(|list| {
            list.split(|&b| b == 0)
                .any(|entry| entry == name.as_bytes())
        }))
    }
}

/// What the domain takes from libxl's tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestLayout<'a> {
    /// The first RAM bank: base and size.
    pub ram: (u64, u64),
    /// `/chosen/bootargs`: the domain's command line (empty if none).
    pub bootargs: &'a str,
    /// Where the grant table's frames are to be mapped, and how much room.
    pub grant_table: (u64, u64),
    /// The GICv3 distributor and the first redistributor.
    pub gicd: u64,
    pub gicr: u64,
    /// Xen's event channel upcall, and the virtual timer's interrupt.
    pub event_irq: u32,
    pub vtimer_irq: u32,
}

/// Reads the layout from libxl's device tree.
pub fn guest_layout(blob: &[u8]) -> Result<GuestLayout<'_>, FdtError> {
    let fdt = Fdt::new(blob)?;
    if !fdt.compatible(&["hypervisor"], "xen,xen")? {
        return Err(FdtError::Missing("/hypervisor (compatible \"xen,xen\")"));
    }
    let gic = ["interrupt-controller"];
    if !fdt.compatible(&gic, "arm,gic-v3")? {
        return Err(FdtError::NotGicV3);
    }
    let bootargs = match fdt.property(&["chosen"], "bootargs")? {
        Some(value) => {
            let text = value.split(|&b| b == 0).next().unwrap_or(value);
            core::str::from_utf8(text).map_err(|_| FdtError::Missing("/chosen/bootargs"))?
        }
        None => "",
    };
    Ok(GuestLayout {
        ram: fdt.reg(&["memory"], 0, "/memory reg")?,
        bootargs,
        grant_table: fdt.reg(&["hypervisor"], 0, "/hypervisor reg")?,
        gicd: fdt.reg(&gic, 0, "GIC distributor")?.0,
        gicr: fdt.reg(&gic, 1, "GIC redistributor")?.0,
        event_irq: fdt.interrupt(&["hypervisor"], 0, "/hypervisor interrupts")?,
        // The timer's interrupts: secure physical, physical, virtual, hypervisor.
        vtimer_irq: fdt.interrupt(&["timer"], 2, "/timer interrupts")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small tree writer, enough to build libxl's shape and break it.
    #[derive(Default)]
    struct Writer {
        structs: Vec<u8>,
        strings: Vec<u8>,
    }

    impl Writer {
        fn word(&mut self, w: u32) {
            self.structs.extend_from_slice(&w.to_be_bytes());
        }
        fn pad(&mut self) {
            while !self.structs.len().is_multiple_of(4) {
                self.structs.push(0);
            }
        }
        fn begin(&mut self, name: &str) {
            self.word(BEGIN_NODE);
            self.structs.extend_from_slice(name.as_bytes());
            self.structs.push(0);
            self.pad();
        }
        fn end(&mut self) {
            self.word(END_NODE);
        }
        fn prop(&mut self, name: &str, value: &[u8]) {
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            self.word(PROP);
            self.word(value.len() as u32);
            self.word(off);
            self.structs.extend_from_slice(value);
            self.pad();
        }
        fn cells(&mut self, name: &str, cells: &[u32]) {
            let bytes: Vec<u8> = cells.iter().flat_map(|c| c.to_be_bytes()).collect();
            self.prop(name, &bytes);
        }
        fn finish(mut self) -> Vec<u8> {
            self.word(END);
            let off_struct = 40 + 16; // header, then one empty reservation
            let off_strings = off_struct + self.structs.len();
            let total = off_strings + self.strings.len();
            let mut blob = Vec::new();
            for w in [
                MAGIC,
                total as u32,
                off_struct as u32,
                off_strings as u32,
                40,
                17,
                16,
                0,
                self.strings.len() as u32,
                self.structs.len() as u32,
            ] {
                blob.extend_from_slice(&w.to_be_bytes());
            }
            blob.extend_from_slice(&[0; 16]);
            blob.extend_from_slice(&self.structs);
            blob.extend_from_slice(&self.strings);
            blob
        }
    }

    /// The shape of the tree libxl 4.17 writes for a PVH domain on arm64.
    fn libxl_like(gic: &str, bootargs: Option<&str>) -> Vec<u8> {
        let mut w = Writer::default();
        w.begin("");
        w.cells("#address-cells", &[2]);
        w.cells("#size-cells", &[2]);
        w.prop("compatible", b"xen,xenvm-4.17\0xen,xenvm\0");
        w.begin("chosen");
        if let Some(args) = bootargs {
            w.prop("bootargs", format!("{args}\0").as_bytes());
        }
        w.end();
        w.begin("cpus");
        w.cells("#address-cells", &[1]);
        w.begin("cpu@0");
        w.cells("reg", &[0]);
        w.end();
        w.end();
        w.begin("memory@40000000");
        w.prop("device_type", b"memory\0");
        w.cells("reg", &[0, 0x4000_0000, 0, 0x0400_0000]);
        w.end();
        w.begin("interrupt-controller@3001000");
        w.prop("compatible", format!("{gic}\0").as_bytes());
        w.cells(
            "reg",
            &[0, 0x0300_1000, 0, 0x10000, 0, 0x0302_0000, 0, 0x20000],
        );
        w.end();
        w.begin("timer");
        w.cells(
            "interrupts",
            &[1, 13, 0xf08, 1, 14, 0xf08, 1, 11, 0xf08, 1, 10, 0xf08],
        );
        w.end();
        w.begin("hypervisor");
        w.prop("compatible", b"xen,xen-4.17\0xen,xen\0");
        w.cells("reg", &[0, 0x3800_0000, 0, 0x0100_0000]);
        w.cells("interrupts", &[1, 15, 0xf08]);
        w.end();
        w.end();
        w.finish()
    }

    #[test]
    fn reads_what_libxl_writes() {
        let blob = libxl_like("arm,gic-v3", Some("hello-http greeting=hi"));
        let layout = guest_layout(&blob).unwrap();
        assert_eq!(
            layout,
            GuestLayout {
                ram: (0x4000_0000, 0x0400_0000),
                bootargs: "hello-http greeting=hi",
                grant_table: (0x3800_0000, 0x0100_0000),
                gicd: 0x0300_1000,
                gicr: 0x0302_0000,
                event_irq: 31,
                vtimer_irq: 27,
            }
        );
        assert_eq!(total_size(&blob), Some(blob.len()));
    }

    #[test]
    fn no_bootargs_is_an_empty_command_line() {
        let blob = libxl_like("arm,gic-v3", None);
        assert_eq!(guest_layout(&blob).unwrap().bootargs, "");
    }

    #[test]
    fn a_gicv2_domain_is_refused_by_name() {
        let blob = libxl_like("arm,cortex-a15-gic", None);
        assert_eq!(guest_layout(&blob), Err(FdtError::NotGicV3));
    }

    #[test]
    fn a_property_of_a_deeper_node_is_not_taken_for_its_parents() {
        let blob = libxl_like("arm,gic-v3", None);
        let fdt = Fdt::new(&blob).unwrap();
        // `reg` exists under /cpus/cpu@0, not under /cpus.
        assert_eq!(fdt.property(&["cpus"], "reg").unwrap(), None);
        assert!(fdt.property(&["cpus", "cpu"], "reg").unwrap().is_some());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let blob = libxl_like("arm,gic-v3", Some("x"));
        for len in 0..blob.len() {
            assert!(guest_layout(&blob[..len]).is_err(), "{len} bytes taken");
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = guest_layout(&bytes);
        }

        /// A real tree with bytes flipped: an error or a layout, never a panic.
        #[test]
        fn a_damaged_tree_never_panics(flips in proptest::collection::vec((0usize..1024, proptest::num::u8::ANY), 1..16)) {
            let mut blob = libxl_like("arm,gic-v3", Some("hello-http"));
            let len = blob.len();
            for (at, byte) in flips {
                blob[at % len] = byte;
            }
            let _ = guest_layout(&blob);
        }
    }
}
