//! Validating a unikernel ELF against the guest ABI, before any of it runs.

use goblin::elf::{header, program_header as ph, Elf};
use jitsu_abi::{layout, ABI_VERSION, NOTE_TYPE_ABI};
use thiserror::Error;

use crate::memory::{GuestMemory, MemoryError};

/// More loadable segments than this is not a unikernel we built.
const MAX_SEGMENTS: usize = 16;

/// The ELF machines of the unikernels Jitsu runs, by name.
pub const MACHINES: [(u16, &str); 2] =
    [(header::EM_X86_64, "x86-64"), (header::EM_AARCH64, "arm64")];

/// The ELF machine of the guests this monitor runs: its own.
#[cfg(target_arch = "x86_64")]
pub const MACHINE: u16 = header::EM_X86_64;
#[cfg(target_arch = "aarch64")]
pub const MACHINE: u16 = header::EM_AARCH64;

/// `machine`'s name, if Jitsu runs it.
pub fn machine_name(machine: u16) -> Option<&'static str> {
    MACHINES
        .iter()
        .find(|(m, _)| *m == machine)
        .map(|(_, n)| *n)
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("not a 64-bit little-endian ELF file")]
    NotElf64,
    #[error("malformed or truncated ELF: {0}")]
    Malformed(String),
    #[error("not an executable (ELF type {0}, want ET_EXEC; a unikernel is linked static and not position-independent)")]
    NotExecutable(u16),
    #[error("wrong architecture (ELF machine {found}{}, want {})", machine_name(*.found).map(|n| format!(", {n}")).unwrap_or_default(), machine_name(*.want).unwrap_or("?"))]
    WrongArchitecture { found: u16, want: u16 },
    #[error("no loadable segments")]
    NoSegments,
    #[error("too many loadable segments ({0}, at most {MAX_SEGMENTS})")]
    TooManySegments(usize),
    #[error("segment at {vaddr:#x} has different virtual and physical addresses ({paddr:#x})")]
    NotIdentityMapped { vaddr: u64, paddr: u64 },
    #[error("segment {start:#x}..{end:#x} lies outside guest memory (images load from {min:#x} up to the memory size {mem:#x}; try a larger --mem)", min = layout::IMAGE_MIN_ADDR)]
    SegmentOutsideMemory { start: u64, end: u64, mem: u64 },
    #[error("segment at {vaddr:#x} is both writable and executable (W^X)")]
    WritableAndExecutable { vaddr: u64 },
    #[error("segment at {vaddr:#x} claims more file bytes than the file has")]
    SegmentPastEndOfFile { vaddr: u64 },
    #[error("segment at {vaddr:#x} has more file bytes than memory bytes")]
    FileLargerThanMemory { vaddr: u64 },
    #[error("segments at {a:#x} and {b:#x} share a page (link with page-aligned segments)")]
    SegmentsSharePage { a: u64, b: u64 },
    #[error("entry point {0:#x} is not in an executable segment")]
    EntryNotExecutable(u64),
    #[error("no Jitsu ABI note (is this a Jitsu unikernel? build it with the Jitsu SDK)")]
    NoAbiNote,
    #[error("ABI version {found} is not supported (this monitor speaks version {ABI_VERSION})")]
    AbiMismatch { found: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perms {
    pub write: bool,
    pub exec: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub gpa: u64,
    pub mem_len: u64,
    pub file_offset: u64,
    pub file_len: u64,
    pub perms: Perms,
}

impl Segment {
    pub fn end(&self) -> u64 {
        self.gpa + self.mem_len
    }

    /// Read-only, all of it in the file, and page-aligned in both the file
    /// and the guest: it can be the file's own pages. (The tail of its last
    /// page then shows the file's next bytes, as a process's mapping of an
    /// ELF does; they belong to the same image.)
    fn can_be_mapped(&self) -> bool {
        let page = layout::PAGE_SIZE;
        !self.perms.write
            && self.file_len == self.mem_len
            && self.file_len > 0
            && self.gpa % page == 0
            && self.file_offset % page == 0
    }
}

/// A checked kernel: what to load where, and where to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelImage {
    pub entry: u64,
    /// Sorted by address, page-disjoint.
    pub segments: Vec<Segment>,
    pub abi_version: u32,
}

impl KernelImage {
    /// Validates `bytes` as a unikernel for a guest of `mem_size` bytes on
    /// this monitor.
    pub fn parse(bytes: &[u8], mem_size: u64) -> Result<KernelImage, ElfError> {
        Self::parse_for(bytes, mem_size, MACHINE)
    }

    /// [`KernelImage::parse`] for a monitor on `machine` (`jitsu pack`
    /// checks every architecture's build).
    pub fn parse_for(bytes: &[u8], mem_size: u64, machine: u16) -> Result<KernelImage, ElfError> {
        if bytes.get(..4) != Some(b"\x7fELF".as_slice()) {
            return Err(ElfError::NotElf);
        }
        if bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
            return Err(ElfError::NotElf64);
        }
        let elf = Elf::parse(bytes).map_err(|e| ElfError::Malformed(e.to_string()))?;
        if elf.header.e_type != header::ET_EXEC {
            return Err(ElfError::NotExecutable(elf.header.e_type));
        }
        if elf.header.e_machine != machine {
            return Err(ElfError::WrongArchitecture {
                found: elf.header.e_machine,
                want: machine,
            });
        }
        let segments = load_segments(&elf, bytes.len() as u64, mem_size)?;
        let entry = elf.entry;
        if !segments
            .iter()
            .any(|s| s.perms.exec && (s.gpa..s.end()).contains(&entry))
        {
            return Err(ElfError::EntryNotExecutable(entry));
        }
        let abi_version = abi_note(&elf, bytes)?;
        if abi_version != ABI_VERSION {
            return Err(ElfError::AbiMismatch { found: abi_version });
        }
        Ok(KernelImage {
            entry,
            segments,
            abi_version,
        })
    }

    /// First page boundary past the last segment.
    pub fn end(&self) -> u64 {
        let end = self
            .segments
            .iter()
            .map(Segment::end)
            .max()
            .unwrap_or(layout::IMAGE_MIN_ADDR);
        end.next_multiple_of(layout::PAGE_SIZE)
    }

    /// Puts the segments into guest memory (which starts zeroed, so the part
    /// of each segment past its file bytes is already clear). With the
    /// kernel `file`, segments nobody writes are mapped from it, shared with
    /// every VM of the image; the others are copied.
    pub fn load(
        &self,
        bytes: &[u8],
        file: Option<std::os::fd::BorrowedFd<'_>>,
        mem: &mut GuestMemory,
    ) -> Result<(), MemoryError> {
        for s in &self.segments {
            match file.filter(|_| s.can_be_mapped()) {
                Some(fd) => mem.map_file(s.gpa, s.file_len, fd, s.file_offset)?,
                None => {
                    let src = &bytes[s.file_offset as usize..(s.file_offset + s.file_len) as usize];
                    mem.slice_mut(s.gpa, s.file_len)?.copy_from_slice(src);
                }
            }
        }
        Ok(())
    }
}

fn load_segments(elf: &Elf, file_len: u64, mem_size: u64) -> Result<Vec<Segment>, ElfError> {
    let mut segments = Vec::new();
    for p in elf
        .program_headers
        .iter()
        .filter(|p| p.p_type == ph::PT_LOAD && p.p_memsz > 0)
    {
        if segments.len() == MAX_SEGMENTS {
            let total = elf
                .program_headers
                .iter()
                .filter(|p| p.p_type == ph::PT_LOAD)
                .count();
            return Err(ElfError::TooManySegments(total));
        }
        segments.push(check_segment(p, file_len, mem_size)?);
    }
    if segments.is_empty() {
        return Err(ElfError::NoSegments);
    }
    segments.sort_by_key(|s| s.gpa);
    for pair in segments.windows(2) {
        let a_last_page = (pair[0].end() - 1) / layout::PAGE_SIZE;
        if a_last_page >= pair[1].gpa / layout::PAGE_SIZE {
            return Err(ElfError::SegmentsSharePage {
                a: pair[0].gpa,
                b: pair[1].gpa,
            });
        }
    }
    Ok(segments)
}

fn check_segment(p: &ph::ProgramHeader, file_len: u64, mem_size: u64) -> Result<Segment, ElfError> {
    let vaddr = p.p_vaddr;
    if p.p_paddr != vaddr {
        return Err(ElfError::NotIdentityMapped {
            vaddr,
            paddr: p.p_paddr,
        });
    }
    let end = vaddr.checked_add(p.p_memsz);
    if vaddr < layout::IMAGE_MIN_ADDR || end.is_none_or(|end| end > mem_size) {
        let end = end.unwrap_or(u64::MAX);
        return Err(ElfError::SegmentOutsideMemory {
            start: vaddr,
            end,
            mem: mem_size,
        });
    }
    let perms = Perms {
        write: p.p_flags & ph::PF_W != 0,
        exec: p.p_flags & ph::PF_X != 0,
    };
    if perms.write && perms.exec {
        return Err(ElfError::WritableAndExecutable { vaddr });
    }
    if p.p_offset
        .checked_add(p.p_filesz)
        .is_none_or(|end| end > file_len)
    {
        return Err(ElfError::SegmentPastEndOfFile { vaddr });
    }
    if p.p_filesz > p.p_memsz {
        return Err(ElfError::FileLargerThanMemory { vaddr });
    }
    Ok(Segment {
        gpa: vaddr,
        mem_len: p.p_memsz,
        file_offset: p.p_offset,
        file_len: p.p_filesz,
        perms,
    })
}

fn abi_note(elf: &Elf, bytes: &[u8]) -> Result<u32, ElfError> {
    let notes = elf.iter_note_headers(bytes).into_iter().flatten();
    for note in notes {
        let note = note.map_err(|e| ElfError::Malformed(format!("note: {e}")))?;
        if note.name == "JITSU" && note.n_type == NOTE_TYPE_ABI {
            let version = note
                .desc
                .get(..4)
                .ok_or(ElfError::Malformed("short ABI note".into()))?;
            return Ok(u32::from_le_bytes(version.try_into().expect("slice of 4")));
        }
    }
    Err(ElfError::NoAbiNote)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MEM: u64 = 16 << 20;

    /// A minimal unikernel ELF: one segment per `(vaddr, flags, bytes, memsz)`
    /// and, unless `abi` is None, the ABI note with that version.
    fn build(segments: &[(u64, u32, &[u8], u64)], entry: u64, abi: Option<u32>) -> Vec<u8> {
        let phnum = segments.len() + abi.is_some() as usize;
        let mut data_off = 64 + 56 * phnum;
        let mut out = vec![0u8; data_off];
        out[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
        out[16..18].copy_from_slice(&2u16.to_le_bytes());
        out[18..20].copy_from_slice(&MACHINE.to_le_bytes());
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[24..32].copy_from_slice(&entry.to_le_bytes());
        out[32..40].copy_from_slice(&64u64.to_le_bytes());
        out[52..54].copy_from_slice(&64u16.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
        let phdr = |i: usize,
                    p_type: u32,
                    flags: u32,
                    offset: usize,
                    vaddr: u64,
                    filesz: usize,
                    memsz: u64,
                    out: &mut Vec<u8>| {
            let at = 64 + 56 * i;
            let align = if p_type == ph::PT_NOTE { 4 } else { 0x1000 };
            let fields = [offset as u64, vaddr, vaddr, filesz as u64, memsz, align];
            out[at..at + 4].copy_from_slice(&p_type.to_le_bytes());
            out[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
            for (k, f) in fields.iter().enumerate() {
                out[at + 8 + 8 * k..at + 16 + 8 * k].copy_from_slice(&f.to_le_bytes());
            }
        };
        for (i, (vaddr, flags, bytes, memsz)) in segments.iter().enumerate() {
            phdr(
                i,
                ph::PT_LOAD,
                *flags,
                data_off,
                *vaddr,
                bytes.len(),
                *memsz,
                &mut out,
            );
            out.extend_from_slice(bytes);
            data_off += bytes.len();
        }
        if let Some(version) = abi {
            phdr(
                segments.len(),
                ph::PT_NOTE,
                4,
                data_off,
                0,
                28,
                28,
                &mut out,
            );
            for word in [6u32, 8, NOTE_TYPE_ABI] {
                out.extend_from_slice(&word.to_le_bytes());
            }
            out.extend_from_slice(b"JITSU\0\0\0");
            out.extend_from_slice(&version.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
        }
        out
    }

    const RX: u32 = ph::PF_R | ph::PF_X;
    const RW: u32 = ph::PF_R | ph::PF_W;

    fn good() -> Vec<u8> {
        build(
            &[
                (0x10_0000, RX, &[0xc3; 64], 64),
                (0x10_1000, RW, &[1; 8], 0x2000),
            ],
            0x10_0000,
            Some(ABI_VERSION),
        )
    }

    #[test]
    fn accepts_a_good_image_and_loads_it() {
        let bytes = good();
        let image = KernelImage::parse(&bytes, MEM).unwrap();
        assert_eq!(image.entry, 0x10_0000);
        assert_eq!(image.end(), 0x10_3000);
        let mut mem = GuestMemory::new(MEM).unwrap();
        image.load(&bytes, None, &mut mem).unwrap();
        assert_eq!(mem.slice(0x10_0000, 2).unwrap(), &[0xc3, 0xc3]);
        assert_eq!(
            mem.slice(0x10_1007, 2).unwrap(),
            &[1, 0],
            "bss past the file bytes is zero"
        );
    }

    #[test]
    fn refuses_each_bad_case() {
        let parse = |bytes: &[u8]| KernelImage::parse(bytes, MEM).unwrap_err();
        assert_eq!(parse(b"MZ\x90\x00"), ElfError::NotElf);
        let mut b = good();
        b[4] = 1;
        assert_eq!(parse(&b), ElfError::NotElf64);
        let mut b = good();
        b[18] = 40; // EM_ARM
        assert_eq!(
            parse(&b),
            ElfError::WrongArchitecture {
                found: 40,
                want: MACHINE
            }
        );
        let other = MACHINES.iter().find(|(m, _)| *m != MACHINE).unwrap();
        let message = KernelImage::parse_for(&good(), MEM, other.0)
            .unwrap_err()
            .to_string();
        assert!(
            message.contains(&format!(", want {}", other.1)),
            "{message}"
        );
        assert!(KernelImage::parse_for(&good(), MEM, MACHINE).is_ok());
        let mut b = good();
        b[16] = 3;
        assert_eq!(parse(&b), ElfError::NotExecutable(3));
        let wx = build(
            &[(0x10_0000, RX | ph::PF_W, &[0; 4], 4)],
            0x10_0000,
            Some(1),
        );
        assert_eq!(
            parse(&wx),
            ElfError::WritableAndExecutable { vaddr: 0x10_0000 }
        );
        let low = build(&[(0x8000, RX, &[0; 4], 4)], 0x8000, Some(1));
        assert!(matches!(parse(&low), ElfError::SegmentOutsideMemory { .. }));
        let high = build(&[(MEM - 2, RX, &[0; 4], 4)], MEM - 2, Some(1));
        assert!(matches!(
            parse(&high),
            ElfError::SegmentOutsideMemory { .. }
        ));
        let wrap = build(&[(u64::MAX - 1, RX, &[0; 4], 4)], 0x10_0000, Some(1));
        assert!(matches!(
            parse(&wrap),
            ElfError::SegmentOutsideMemory { .. }
        ));
        let shared = build(
            &[(0x10_0000, RX, &[0; 4], 4), (0x10_0800, RW, &[0; 4], 4)],
            0x10_0000,
            Some(1),
        );
        assert_eq!(
            parse(&shared),
            ElfError::SegmentsSharePage {
                a: 0x10_0000,
                b: 0x10_0800
            }
        );
        let entry = build(
            &[(0x10_0000, RX, &[0; 4], 4), (0x10_1000, RW, &[0; 4], 4)],
            0x10_1000,
            Some(1),
        );
        assert_eq!(parse(&entry), ElfError::EntryNotExecutable(0x10_1000));
        let fat = build(&[(0x10_0000, RX, &[0; 64], 4)], 0x10_0000, Some(1));
        assert_eq!(
            parse(&fat),
            ElfError::FileLargerThanMemory { vaddr: 0x10_0000 }
        );
        let none = build(&[], 0x10_0000, Some(1));
        assert_eq!(parse(&none), ElfError::NoSegments);
        let no_note = build(&[(0x10_0000, RX, &[0; 4], 4)], 0x10_0000, None);
        assert_eq!(parse(&no_note), ElfError::NoAbiNote);
        let v2 = build(&[(0x10_0000, RX, &[0; 4], 4)], 0x10_0000, Some(2));
        assert_eq!(parse(&v2), ElfError::AbiMismatch { found: 2 });
        let many: Vec<(u64, u32, &[u8], u64)> = (0..17)
            .map(|i| (0x10_0000 + i * 0x1000, RX, &[0u8; 4][..], 4))
            .collect();
        assert_eq!(
            parse(&build(&many, 0x10_0000, Some(1))),
            ElfError::TooManySegments(17)
        );
    }

    /// Whatever `parse` accepts is safe to load and map.
    fn assert_sound(image: &KernelImage, bytes: &[u8]) {
        for s in &image.segments {
            assert!(s.gpa >= layout::IMAGE_MIN_ADDR && s.end() <= MEM);
            assert!(!(s.perms.write && s.perms.exec));
            assert!(s.file_offset + s.file_len <= bytes.len() as u64 && s.file_len <= s.mem_len);
        }
        assert!(image.segments.windows(2).all(|w| w[0].end() <= w[1].gpa));
        let mut mem = GuestMemory::new(MEM).unwrap();
        image.load(bytes, None, &mut mem).unwrap();
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = KernelImage::parse(&bytes, MEM);
        }

        #[test]
        fn corrupted_images_are_refused_or_sound(edits in proptest::collection::vec((0usize..400, any::<u8>()), 1..12)) {
            let mut bytes = good();
            for (at, value) in edits {
                let len = bytes.len();
                bytes[at % len] = value;
            }
            if let Ok(image) = KernelImage::parse(&bytes, MEM) {
                assert_sound(&image, &bytes);
            }
        }

        #[test]
        fn generated_segments_are_refused_or_sound(
            specs in proptest::collection::vec((0u64..0x1400, 0u32..8, 0usize..64, 0u64..0x3000), 1..5),
            entry in 0x10_0000u64..0x20_0000,
        ) {
            let data = [0x90u8; 64];
            let segments: Vec<(u64, u32, &[u8], u64)> =
                specs.iter().map(|&(page, flags, len, memsz)| (page * 0x1000, flags, &data[..len], memsz)).collect();
            let bytes = build(&segments, entry, Some(ABI_VERSION));
            if let Ok(image) = KernelImage::parse(&bytes, MEM) {
                assert_sound(&image, &bytes);
            }
        }
    }
}
