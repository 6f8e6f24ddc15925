//! What the Xen backend accepts as a kernel, checked before libxl sees it
//! (libxl's own refusals are terse, and come after it has started work). On
//! x86-64: an ELF with Xen's PHYS32_ENTRY note (a Jitsu guest built for
//! `xen-pvh`, MirageOS 4, Unikraft, a Linux vmlinux), or a Linux bzImage,
//! which libxl unpacks to such an ELF itself. On arm64: an arm64 Linux
//! `Image` (a Jitsu guest built for `xen-pvh` and flattened), the one
//! format libxl boots there.

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
    Arm64Image,
}

impl KernelKind {
    /// The architecture the kernel runs on, as Jitsu's messages name it.
    pub fn arch(self) -> &'static str {
        match self {
            KernelKind::PvhElf | KernelKind::BzImage => "x86-64",
            KernelKind::Arm64Image => "arm64",
        }
    }
}

/// This node's architecture, as [`KernelKind::arch`] names it.
pub const NODE_ARCH: &str = if cfg!(target_arch = "aarch64") {
    "arm64"
} else {
    "x86-64"
};

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("cannot read it: {0}")]
    Read(std::io::Error),
    #[error("it is {0} bytes; kernels are at most {MAX_KERNEL_BYTES}")]
    TooBig(u64),
    #[error("neither an ELF, a Linux bzImage nor an arm64 Image")]
    Unknown,
    #[error("a kernel for {kernel} ({kind:?}); this node is {NODE_ARCH}")]
    OtherArch {
        kernel: &'static str,
        kind: KernelKind,
    },
    #[error("an ELF; Xen on arm64 boots an arm64 Image (a Jitsu guest built with `--features xen` and flattened: `make cross`)")]
    ElfOnArm64,
    #[error("not a valid ELF: {0}")]
    BadElf(String),
    #[error("an ELF for {0}, not x86-64")]
    WrongMachine(String),
    #[error("a 32-bit ELF; PVH kernels here are 64-bit")]
    WrongClass,
    #[error("no Xen PHYS32_ENTRY note, so not a PVH kernel (a Jitsu guest must be built with `--features xen`)")]
    NoPvhNote,
}

/// Reads and checks the kernel at `path`, which must run on this node.
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
    if NODE_ARCH == "arm64" && bytes.starts_with(b"\x7fELF") {
        return Err(ImageError::ElfOnArm64);
    }
    let kind = check(&bytes)?;
    if kind.arch() != NODE_ARCH {
        return Err(ImageError::OtherArch {
            kernel: kind.arch(),
            kind,
        });
    }
    Ok(kind)
}

/// Checks a kernel for either architecture.
pub fn check(bytes: &[u8]) -> Result<KernelKind, ImageError> {
    if is_bzimage(bytes) {
        return Ok(KernelKind::BzImage);
    }
    if is_arm64_image(bytes) {
        return Ok(KernelKind::Arm64Image);
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

/// An arm64 Image's header: 64 bytes with the magic at 0x38.
fn is_arm64_image(bytes: &[u8]) -> bool {
    use crate::defs::arm64::{IMAGE_HEADER_BYTES, IMAGE_MAGIC, IMAGE_MAGIC_OFFSET};
    bytes.len() > IMAGE_HEADER_BYTES
        && bytes.get(IMAGE_MAGIC_OFFSET..IMAGE_MAGIC_OFFSET + 4) == Some(&IMAGE_MAGIC.to_le_bytes())
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

    #[test]
    fn knows_an_arm64_image_header_and_which_node_takes_it() {
        let mut image = vec![0u8; 4096];
        image[0x38..0x3c].copy_from_slice(b"ARM\x64");
        assert_eq!(check(&image).unwrap(), KernelKind::Arm64Image);
        assert_eq!(KernelKind::Arm64Image.arch(), "arm64");
        // A header alone is not a kernel.
        assert!(matches!(check(&image[..64]), Err(ImageError::Unknown)));
        let file = std::env::temp_dir().join(format!("jitsu-image-test-{}", std::process::id()));
        std::fs::write(&file, &image).unwrap();
        let on_this_node = check_file(&file);
        std::fs::remove_file(&file).unwrap();
        if cfg!(target_arch = "aarch64") {
            assert_eq!(on_this_node.unwrap(), KernelKind::Arm64Image);
        } else {
            let err = on_this_node.unwrap_err();
            assert!(
                matches!(
                    err,
                    ImageError::OtherArch {
                        kernel: "arm64",
                        ..
                    }
                ),
                "{err:?}"
            );
            assert!(err.to_string().contains("this node is x86-64"), "{err}");
        }
    }

    proptest::proptest! {
        /// Whatever the bytes, the check answers without crashing, and
        /// refuses them unless they carry a bzImage header.
        #[test]
        fn any_bytes_are_refused(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)) {
            proptest::prop_assert!(check(&bytes).is_err() || is_bzimage(&bytes) || is_arm64_image(&bytes));
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
