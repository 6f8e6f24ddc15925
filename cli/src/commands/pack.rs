//! `jitsu pack`: a unikernel's builds (for KVM, for Xen, or both: the shim
//! picks the node's; for x86-64, arm64, or both: containerd picks the
//! node's) and its metadata as an OCI image archive.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use jitsu_kvm::elf::{machine_name, KernelImage};
use jitsu_spec::archive::{self as oci, Arch, Entry, File};
use jitsu_spec::{BootPolicy, Hypervisor, Metadata, METADATA_FILE};

/// Where the ELFs lie in the image's filesystem.
const KERNEL_PATH: &str = "unikernel.elf";
const XEN_KERNEL_PATH: &str = "xen/unikernel.elf";

#[derive(Args)]
pub struct PackArgs {
    /// The unikernel ELF for KVM. Once per architecture (x86-64, arm64):
    /// the image is then one per platform under one name.
    #[arg(long, required_unless_present = "xen_kernel")]
    kernel: Vec<PathBuf>,
    /// The same unikernel built for Xen (PVH). With --kernel too, the image
    /// runs on either; alone, on Xen only.
    #[arg(long)]
    xen_kernel: Vec<PathBuf>,
    /// Image name, e.g. `jitsu/hello:latest`.
    #[arg(long)]
    name: String,
    /// Guest memory.
    #[arg(long, default_value = "16M")]
    mem: String,
    /// DNS name to register the service under.
    #[arg(long)]
    dns_name: Option<String>,
    /// Park again after this long idle (e.g. 30s).
    #[arg(long)]
    idle_timeout: Option<String>,
    /// lazy (boot on demand) or eager (boot at start).
    #[arg(long, default_value = "lazy", value_parser = ["lazy", "eager"])]
    boot: String,
    /// Command line for the guest.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// The unikernel's Conduit name: others on the node reach it by it.
    #[arg(long)]
    conduit: Option<String>,
    /// Who besides its own group may connect over Conduit: NAME,
    /// GROUP/NAME or GROUP/*, comma-separated.
    #[arg(long, default_value = "", requires = "conduit")]
    conduit_allow: String,
    /// The image archive to write.
    #[arg(short = 'o', long)]
    output: PathBuf,
}

/// One architecture's builds, read and checked.
#[derive(Default)]
struct Builds {
    kvm: Option<(PathBuf, Vec<u8>)>,
    xen: Option<(PathBuf, Vec<u8>)>,
}

pub fn run(args: PackArgs) -> Result<u8> {
    let mut by_arch: BTreeMap<String, (Arch, Builds)> = BTreeMap::new();
    for (path, xen) in args
        .kernel
        .iter()
        .map(|p| (p, false))
        .chain(args.xen_kernel.iter().map(|p| (p, true)))
    {
        let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
        let arch = build_arch(&bytes, xen).with_context(|| format!("{}", path.display()))?;
        let name = arch.to_string();
        let (_, builds) = by_arch
            .entry(name.clone())
            .or_insert_with(|| (arch, Builds::default()));
        let slot = if xen {
            &mut builds.xen
        } else {
            &mut builds.kvm
        };
        if slot.replace((path.clone(), bytes)).is_some() {
            let kind = if xen { "Xen" } else { "KVM" };
            bail!("{}: a second {kind} build for {name}", path.display());
        }
    }
    let mut metadata_json = Vec::new();
    let mut platforms = Vec::new();
    for (arch, builds) in by_arch.values() {
        let metadata = metadata(&args, builds)?;
        let spec = metadata.validate().context("image metadata")?;
        if let Some((path, elf)) = &builds.kvm {
            let machine = goblin::elf::Elf::parse_header(elf)?.e_machine;
            KernelImage::parse_for(elf, spec.mem, machine)
                .with_context(|| format!("{}", path.display()))?;
        }
        metadata_json.push(metadata.to_json());
        platforms.push((arch.clone(), metadata, builds));
    }
    let images: Vec<oci::Image> = platforms
        .iter()
        .zip(&metadata_json)
        .map(|((arch, metadata, builds), json)| {
            let mut entries = Vec::new();
            for (path, elf) in [(KERNEL_PATH, &builds.kvm), (XEN_KERNEL_PATH, &builds.xen)] {
                if let Some((_, data)) = elf {
                    entries.push(Entry::File(File {
                        path,
                        mode: 0o755,
                        data,
                    }));
                }
            }
            entries.push(Entry::File(File {
                path: METADATA_FILE,
                mode: 0o644,
                data: json.as_bytes(),
            }));
            oci::Image {
                arch: arch.clone(),
                entries,
                labels: metadata.labels(),
                entrypoint: metadata.kernel.clone(),
            }
        })
        .collect();
    let reference = oci::normalize_reference(&args.name);
    let archive = oci::index_archive(&images, &reference)
        .map_err(|e| anyhow::anyhow!("writing the image: {e}"))?;
    std::fs::write(&args.output, archive).with_context(|| format!("{}", args.output.display()))?;
    let arches: Vec<String> = images.iter().map(|i| format!("linux/{}", i.arch)).collect();
    eprintln!(
        "jitsu pack: {reference} ({}) → {}",
        arches.join(", "),
        args.output.display()
    );
    Ok(0)
}

/// The platform a build is for, from its ELF header; a Xen build is also
/// checked as a PVH kernel here (a KVM build once its memory is known).
fn build_arch(bytes: &[u8], xen: bool) -> Result<Arch> {
    if xen {
        let kind = jitsu_xen_abi::image::check(bytes).context("not a Xen PVH kernel")?;
        return Ok(match kind {
            jitsu_xen_abi::image::KernelKind::Arm64Image => Arch::ARM64,
            _ => Arch::Amd64,
        });
    }
    binary_arch(bytes)
}

/// An architecture's metadata: the same for every platform but what its
/// builds say about where it can run.
fn metadata(args: &PackArgs, builds: &Builds) -> Result<Metadata> {
    let main_path = if builds.kvm.is_some() {
        KERNEL_PATH
    } else {
        XEN_KERNEL_PATH
    };
    let mut metadata = Metadata::new(&format!("/{main_path}"));
    metadata.mem = args.mem.clone();
    metadata.cmdline = args.cmdline.clone();
    metadata.dns_name = args.dns_name.clone();
    metadata.idle_timeout = args.idle_timeout.clone();
    metadata.conduit = args.conduit.clone();
    metadata.conduit_allow = args.conduit_allow.clone();
    metadata.boot = if args.boot == "eager" {
        BootPolicy::Eager
    } else {
        BootPolicy::Lazy
    };
    // What the image can run on: a node without it refuses it by name.
    (metadata.xen_kernel, metadata.hypervisor) = match (&builds.kvm, &builds.xen) {
        (Some(_), Some(_)) => (Some(format!("/{XEN_KERNEL_PATH}")), None),
        (Some(_), None) => (None, Some(Hypervisor::Kvm)),
        (None, _) => (None, Some(Hypervisor::Xen)),
    };
    Ok(metadata)
}

/// `jitsu pack-installer`: the node installer's image, made of the static
/// `jitsu`, monitor and shim in each `--bin-dir` and nothing else: one
/// platform per folder (x86-64, arm64), told by its binaries.
#[derive(Args)]
pub struct PackInstallerArgs {
    /// Where the statically linked `jitsu`, `jitsu-monitor` and
    /// `containerd-shim-jitsu-v1` of one architecture are. Once per
    /// architecture.
    #[arg(long, required = true)]
    bin_dir: Vec<PathBuf>,
    /// Image name.
    #[arg(long, default_value = "jitsu/installer:latest")]
    name: String,
    /// The image archive to write.
    #[arg(short = 'o', long)]
    output: PathBuf,
}

pub fn run_installer(args: PackInstallerArgs) -> Result<u8> {
    let names = super::install_node::NODE_BINARIES;
    let mut platforms = Vec::new();
    for dir in &args.bin_dir {
        let mut binaries = Vec::new();
        let mut arch = None;
        for name in names {
            let path = dir.join(name);
            let bytes = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
            ensure_static(&bytes).with_context(|| format!("{}", path.display()))?;
            let this = binary_arch(&bytes).with_context(|| format!("{}", path.display()))?;
            if arch.as_ref().is_some_and(|a| *a != this) {
                bail!(
                    "{}: built for {this}, its neighbours for another",
                    path.display()
                );
            }
            arch = Some(this);
            binaries.push(bytes);
        }
        platforms.push((arch.expect("NODE_BINARIES is not empty"), binaries));
    }
    let images: Vec<oci::Image> = platforms
        .iter()
        .map(|(arch, binaries)| oci::Image {
            arch: arch.clone(),
            entries: names
                .iter()
                .zip(binaries)
                .map(|(name, data)| {
                    Entry::File(File {
                        path: name,
                        mode: 0o755,
                        data,
                    })
                })
                .collect(),
            labels: Default::default(),
            entrypoint: "/jitsu".to_string(),
        })
        .collect();
    let reference = oci::normalize_reference(&args.name);
    let archive = oci::index_archive(&images, &reference)
        .map_err(|e| anyhow::anyhow!("writing the image: {e}"))?;
    std::fs::write(&args.output, archive).with_context(|| format!("{}", args.output.display()))?;
    eprintln!(
        "jitsu pack-installer: {reference} → {}",
        args.output.display()
    );
    Ok(0)
}

/// The platform of a host binary, from its ELF header.
fn binary_arch(elf: &[u8]) -> Result<Arch> {
    let header = goblin::elf::Elf::parse_header(elf).context("not an ELF file")?;
    match machine_name(header.e_machine) {
        Some("x86-64") => Ok(Arch::Amd64),
        Some("arm64") => Ok(Arch::ARM64),
        _ => bail!(
            "ELF machine {}: Jitsu runs on x86-64 and arm64",
            header.e_machine
        ),
    }
}

/// The image has no libc or loader: a binary that asks for one (PT_INTERP)
/// would not start.
fn ensure_static(elf: &[u8]) -> Result<()> {
    let parsed = goblin::elf::Elf::parse(elf).context("not an ELF file")?;
    anyhow::ensure!(
        parsed.interpreter.is_none(),
        "dynamically linked (interpreter {}); build it with crt-static (`make images` does)",
        parsed.interpreter.unwrap_or_default()
    );
    Ok(())
}
