//! Validating a unikernel ELF against the guest ABI, before any of it runs.

use goblin::elf::{header, program_header as ph, Elf};
use jitsu_abi::{layout, ABI_VERSION, NOTE_TYPE_ABI};
use thiserror::Error;

use crate::memory::{GuestMemory, MemoryError};

/// More loadable segments than this is not a unikernel we built.
const MAX_SEGMENTS: usize = 16;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("not a 64-bit little-endian ELF file")]
    NotElf64,
    #[error("malformed ELF: {0}")]
    Malformed(String),
    #[error("not an executable (ELF type {0}, want ET_EXEC; a unikernel is linked static and not position-independent)")]
    NotExecutable(u16),
    #[error("wrong architecture (ELF machine {0}, want x86-64)")]
    WrongArchitecture(u16),
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
    /// Validates `bytes` as a unikernel for a guest of `mem_size` bytes.
    pub fn parse(bytes: &[u8], mem_size: u64) -> Result<KernelImage, ElfError> {
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
        if elf.header.e_machine != header::EM_X86_64 {
            return Err(ElfError::WrongArchitecture(elf.header.e_machine));
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

    /// Copies the segments into guest memory (which starts zeroed, so the
    /// part of each segment past its file bytes is already clear).
    pub fn load(&self, bytes: &[u8], mem: &mut GuestMemory) -> Result<(), MemoryError> {
        for s in &self.segments {
            let src = &bytes[s.file_offset as usize..(s.file_offset + s.file_len) as usize];
            mem.slice_mut(s.gpa, s.file_len)?.copy_from_slice(src);
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
