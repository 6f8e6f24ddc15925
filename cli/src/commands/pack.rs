//! `jitsu pack`: a unikernel's builds (for KVM, for Xen, or both in one
//! image: the shim picks the node's) and its metadata as an OCI image archive.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use jitsu_kvm::elf::KernelImage;
use jitsu_spec::{BootPolicy, Hypervisor, Metadata, METADATA_FILE};

use jitsu_spec::archive::{self as oci, File};

/// Where the ELFs lie in the image's filesystem.
const KERNEL_PATH: &str = "unikernel.elf";
const XEN_KERNEL_PATH: &str = "xen/unikernel.elf";

#[derive(Args)]
pub struct PackArgs {
    /// The unikernel ELF for KVM.
    #[arg(long, required_unless_present = "xen_kernel")]
    kernel: Option<PathBuf>,
    /// The same unikernel built for Xen (PVH). With --kernel too, the image
    /// runs on either; alone, on Xen only.
    #[arg(long)]
    xen_kernel: Option<PathBuf>,
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

pub fn run(args: PackArgs) -> Result<u8> {
    let read = |path: &PathBuf| std::fs::read(path).with_context(|| format!("{}", path.display()));
    let kvm = args.kernel.as_ref().map(read).transpose()?;
    let xen = args.xen_kernel.as_ref().map(read).transpose()?;
    let main_path = if kvm.is_some() {
        KERNEL_PATH
    } else {
        XEN_KERNEL_PATH
    };
    let mut metadata = Metadata::new(&format!("/{main_path}"));
    metadata.mem = args.mem;
    metadata.cmdline = args.cmdline;
    metadata.dns_name = args.dns_name;
    metadata.idle_timeout = args.idle_timeout;
    metadata.conduit = args.conduit;
    metadata.conduit_allow = args.conduit_allow;
    metadata.boot = if args.boot == "eager" {
        BootPolicy::Eager
    } else {
        BootPolicy::Lazy
    };
    // What the image can run on: a node without it refuses it by name.
    (metadata.xen_kernel, metadata.hypervisor) = match (&kvm, &xen) {
        (Some(_), Some(_)) => (Some(format!("/{XEN_KERNEL_PATH}")), None),
        (Some(_), None) => (None, Some(Hypervisor::Kvm)),
        (None, _) => (None, Some(Hypervisor::Xen)),
    };
    let spec = metadata.validate().context("image metadata")?;
    if let (Some(elf), Some(path)) = (&kvm, &args.kernel) {
        KernelImage::parse(elf, spec.mem).with_context(|| format!("{}", path.display()))?;
    }
    if let (Some(elf), Some(path)) = (&xen, &args.xen_kernel) {
        jitsu_xen_abi::image::check(elf)
            .with_context(|| format!("{}: not a Xen PVH kernel", path.display()))?;
    }
    let json = metadata.to_json();
    let mut files = Vec::new();
    if let Some(elf) = &kvm {
        files.push(File {
            path: KERNEL_PATH,
            mode: 0o755,
            data: elf,
        });
    }
    if let Some(elf) = &xen {
        files.push(File {
            path: XEN_KERNEL_PATH,
            mode: 0o755,
            data: elf,
        });
    }
    files.push(File {
        path: METADATA_FILE,
        mode: 0o644,
        data: json.as_bytes(),
    });
    let reference = oci::normalize_reference(&args.name);
    let archive = oci::image_archive(
        &files,
        metadata.labels(),
        &format!("/{main_path}"),
        &reference,
    )
    .map_err(|e| anyhow::anyhow!("writing the image: {e}"))?;
    std::fs::write(&args.output, archive).with_context(|| format!("{}", args.output.display()))?;
    eprintln!("jitsu pack: {reference} → {}", args.output.display());
    Ok(0)
}

/// `jitsu pack-installer`: the node installer's image, made of the static
/// `jitsu`, monitor and shim in `--bin-dir` and nothing else.
#[derive(Args)]
pub struct PackInstallerArgs {
    /// Where the statically linked `jitsu`, `jitsu-monitor` and `containerd-shim-jitsu-v1` are.
    #[arg(long)]
    bin_dir: PathBuf,
    /// Image name.
    #[arg(long, default_value = "jitsu/installer:latest")]
    name: String,
    /// The image archive to write.
    #[arg(short = 'o', long)]
    output: PathBuf,
}

pub fn run_installer(args: PackInstallerArgs) -> Result<u8> {
    let names = super::install_node::NODE_BINARIES;
    let mut binaries = Vec::new();
    for name in names {
        let path = args.bin_dir.join(name);
        let bytes = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
        ensure_static(&bytes).with_context(|| format!("{}", path.display()))?;
        binaries.push(bytes);
    }
    let files: Vec<File> = names
        .iter()
        .zip(&binaries)
        .map(|(name, data)| File {
            path: name,
            mode: 0o755,
            data,
        })
        .collect();
    let reference = oci::normalize_reference(&args.name);
    let archive = oci::image_archive(&files, Default::default(), "/jitsu", &reference)
        .map_err(|e| anyhow::anyhow!("writing the image: {e}"))?;
    std::fs::write(&args.output, archive).with_context(|| format!("{}", args.output.display()))?;
    eprintln!(
        "jitsu pack-installer: {reference} → {}",
        args.output.display()
    );
    Ok(0)
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
