//! What the Xen backend accepts as a kernel, checked before libxl sees it
//! (libxl's own refusals are terse, and come after it has started work): an
//! x86-64 ELF with Xen's PHYS32_ENTRY note (a Jitsu guest built for
//! `xen-pvh`, MirageOS 4, Unikraft, a Linux vmlinux), or a Linux bzImage,
//! which libxl unpacks to such an ELF itself.

use std::io::Read;
use std::path::Path;

use goblin::elf::Elf;
use thiserror::Error;

/// Kernels larger than this are refused unread.
pub const MAX_KERNEL_BYTES: u64 = 256 << 20;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const EM_X86_64: u16 = 62;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    PvhElf,
    BzImage,
}

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("cannot read it: {0}")]
    Read(std::io::Error),
    #[error("it is {0} bytes; kernels are at most {MAX_KERNEL_BYTES}")]
    TooBig(u64),
    #[error("neither an ELF nor a Linux bzImage")]
    Unknown,
    #[error("not a valid ELF: {0}")]
    BadElf(String),
    #[error("an ELF for {0}, not x86-64")]
    WrongMachine(String),
    #[error("a 32-bit ELF; PVH kernels here are 64-bit")]
    WrongClass,
    #[error("no Xen PHYS32_ENTRY note, so not a PVH kernel (a Jitsu guest must be built with `--features xen`)")]
    NoPvhNote,
}

/// Reads and checks the kernel at `path`.
pub fn check_file(path: &Path) -> Result<KernelKind, ImageError> {
    let file = std::fs::File::open(path).map_err(ImageError::Read)?;
    let len = file.metadata().map_err(ImageError::Read)?.len();
    if len > MAX_KERNEL_BYTES {
        return Err(ImageError::TooBig(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_KERNEL_BYTES)
        .read_to_end(&mut bytes)
        .map_err(ImageError::Read)?;
    check(&bytes)
}

pub fn check(bytes: &[u8]) -> Result<KernelKind, ImageError> {
    if is_bzimage(bytes) {
        return Ok(KernelKind::BzImage);
    }
    if !bytes.starts_with(b"\x7fELF") {
        return Err(ImageError::Unknown);
    }
    let elf = Elf::parse(bytes).map_err(|e| ImageError::BadElf(e.to_string()))?;
    if elf.header.e_machine != EM_X86_64 {
        return Err(ImageError::WrongMachine(
            goblin::elf::header::machine_to_str(elf.header.e_machine).to_string(),
        ));
    }
    if !elf.is_64 {
        return Err(ImageError::WrongClass);
    }
    let has_pvh_note = elf
        .iter_note_headers(bytes)
        .into_iter()
        .flatten()
        .chain(elf.iter_note_sections(bytes, None).into_iter().flatten())
        .filter_map(Result::ok)
        .any(|note| {
            note.name == "Xen" && note.n_type == XEN_ELFNOTE_PHYS32_ENTRY && note.desc.len() >= 4
        });
    if !has_pvh_note {
        return Err(ImageError::NoPvhNote);
    }
    Ok(KernelKind::PvhElf)
}

/// Linux's boot protocol header: 0xAA55 at 0x1fe, "HdrS" at 0x202.
fn is_bzimage(bytes: &[u8]) -> bool {
    bytes.get(0x1fe..0x200) == Some(&[0x55, 0xaa]) && bytes.get(0x202..0x206) == Some(b"HdrS")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_kernel() {
        assert!(matches!(check(b"hello"), Err(ImageError::Unknown)));
        assert!(matches!(
            check(b"\x7fELF\x02\x01"),
            Err(ImageError::BadElf(_))
        ));
    }

    #[test]
    fn knows_a_bzimage_header() {
        let mut image = vec![0u8; 0x300];
        image[0x1fe] = 0x55;
        image[0x1ff] = 0xaa;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(check(&image).unwrap(), KernelKind::BzImage);
    }

    proptest::proptest! {
        /// Whatever the bytes, the check answers without crashing, and
        /// refuses them unless they carry a bzImage header.
        #[test]
        fn any_bytes_are_refused(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)) {
            proptest::prop_assert!(check(&bytes).is_err() || is_bzimage(&bytes));
        }

        /// A real ELF (without Xen's note) with bytes flipped here and
        /// there never crashes the check and is never taken for PVH.
        #[test]
        fn a_damaged_elf_is_not_taken_for_pvh(flips in proptest::collection::vec((0usize..8192, proptest::num::u8::ANY), 1..32)) {
            let mut me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
            me.truncate(8192);
            for (at, byte) in flips {
                me[at] = byte;
            }
            proptest::prop_assert!(!matches!(check(&me), Ok(KernelKind::PvhElf)));
        }
    }

    #[test]
    fn refuses_an_elf_without_the_pvh_note() {
        // This test binary is an ELF without Xen's notes: on x86-64 that is
        // what is missing; an arm64 build is refused for its machine first.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let refused = check(&me);
        if cfg!(target_arch = "x86_64") {
            assert!(matches!(refused, Err(ImageError::NoPvhNote)), "{refused:?}");
        } else {
            assert!(
                matches!(refused, Err(ImageError::WrongMachine(_))),
                "{refused:?}"
            );
        }
    }
}
