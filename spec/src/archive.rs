//! Writing an OCI image archive (an image layout in a tar), as
//! `ctr images import` and registries take it. `jitsu pack` uses it for
//! unikernel images; the benchmarks for the native images they compare with.

use std::collections::BTreeMap;
use std::io::Write;

use std::io;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
use flate2::write::GzEncoder;
use oci_spec::image::{
    ConfigBuilder, Descriptor, DescriptorBuilder, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder,
};
use sha2::{Digest as _, Sha256};

/// An image's architecture, as OCI spells it (`amd64`, `arm64`).
pub use oci_spec::image::Arch;

/// A file of the image's filesystem.
#[derive(Clone, Copy)]
pub struct File<'a> {
    pub path: &'a str,
    pub mode: u32,
    pub data: &'a [u8],
}

/// Any entry of a layer. `jitsu pack` writes only files; the others are for
/// the hostile images the tests make (an image need not come from us).
#[derive(Clone, Copy)]
pub enum Entry<'a> {
    File(File<'a>),
    Symlink {
        path: &'a str,
        target: &'a str,
    },
    Fifo {
        path: &'a str,
    },
    CharDevice {
        path: &'a str,
        major: u32,
        minor: u32,
    },
    /// A regular file of `size` zero bytes, stored as one hole (PAX sparse
    /// format 1.0), so that a huge file costs the archive nothing.
    Hole {
        path: &'a str,
        size: u64,
    },
}

/// JSON with object keys sorted (oci-spec keeps annotations and labels in
/// hash maps), so that the same image always has the same digests.
fn canonical_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&serde_json::to_value(value)?)?)
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A tar of `entries` with fixed owners and times, so the same inputs give
/// the same layer digest.
fn layer_tar(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(0);
        header.set_mode(0o644);
        match entry {
            Entry::File(f) => {
                header.set_size(f.data.len() as u64);
                header.set_mode(f.mode);
                header.set_entry_type(tar::EntryType::Regular);
                builder.append_data(&mut header, f.path, f.data)?;
            }
            Entry::Symlink { path, target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                builder.append_link(&mut header, path, target)?;
            }
            Entry::Fifo { path } => {
                header.set_entry_type(tar::EntryType::Fifo);
                builder.append_data(&mut header, path, io::empty())?;
            }
            Entry::CharDevice { path, major, minor } => {
                header.set_entry_type(tar::EntryType::Char);
                header.set_device_major(*major)?;
                header.set_device_minor(*minor)?;
                builder.append_data(&mut header, path, io::empty())?;
            }
            Entry::Hole { path, size } => {
                let size = size.to_string();
                builder.append_pax_extensions([
                    ("GNU.sparse.major", "1".as_bytes()),
                    ("GNU.sparse.minor", b"0"),
                    ("GNU.sparse.name", path.as_bytes()),
                    ("GNU.sparse.realsize", size.as_bytes()),
                ])?;
                // The data starts with the sparse map (no regions: all
                // hole), padded to a block; no region data follows.
                let mut map = b"0\n".to_vec();
                map.resize(512, 0);
                header.set_size(map.len() as u64);
                header.set_entry_type(tar::EntryType::Regular);
                builder.append_data(&mut header, format!("GNUSparseFile.0/{path}"), &map[..])?;
            }
        }
    }
    Ok(builder.into_inner()?)
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes)?;
    Ok(gz.finish()?)
}

fn descriptor(
    media: MediaType,
    blob: &[u8],
    annotations: Option<BTreeMap<String, String>>,
) -> Result<Descriptor> {
    let mut d = DescriptorBuilder::default()
        .media_type(media)
        .size(blob.len() as u64)
        .digest(sha256(blob).parse::<oci_spec::image::Digest>()?);
    if let Some(a) = annotations {
        d = d.annotations(a.into_iter().collect::<std::collections::HashMap<_, _>>());
    }
    Ok(d.build()?)
}

/// One platform's image: its layer's entries, the config's labels (also
/// the manifest's annotations) and entrypoint.
pub struct Image<'a> {
    pub arch: Arch,
    pub entries: Vec<Entry<'a>>,
    pub labels: BTreeMap<String, String>,
    pub entrypoint: String,
}

/// The architecture this program was built for: the one its own images are
/// for (the tests' and benchmarks' native images).
pub fn native_arch() -> Arch {
    if cfg!(target_arch = "aarch64") {
        Arch::ARM64
    } else {
        Arch::Amd64
    }
}

/// Builds the archive of a single image of `files` for this program's
/// architecture, named `reference` (e.g. `docker.io/jitsu/hello:latest`).
pub fn image_archive(
    files: &[File],
    labels: BTreeMap<String, String>,
    entrypoint: &str,
    reference: &str,
) -> Result<Vec<u8>> {
    let entries: Vec<Entry> = files.iter().copied().map(Entry::File).collect();
    image_archive_of(&entries, labels, entrypoint, reference)
}

/// [`image_archive`] of any entries.
pub fn image_archive_of(
    entries: &[Entry],
    labels: BTreeMap<String, String>,
    entrypoint: &str,
    reference: &str,
) -> Result<Vec<u8>> {
    let image = Image {
        arch: native_arch(),
        entries: entries.to_vec(),
        labels,
        entrypoint: entrypoint.to_string(),
    };
    index_archive(&[image], reference)
}

/// Builds the archive of one image for several platforms (Linux on each
/// image's architecture), named `reference`: the archive's index.json names
/// an image index whose manifests carry their platforms, so that a node
/// pulls, unpacks and runs its own (containerd's platform matcher) and a
/// registry keeps them as one multi-arch image.
pub fn index_archive(images: &[Image], reference: &str) -> Result<Vec<u8>> {
    let mut blobs = Vec::new();
    let mut manifests = Vec::new();
    for image in images {
        if images.iter().filter(|i| i.arch == image.arch).count() > 1 {
            return Err(format!("two images for {}", image.arch).into());
        }
        let (manifest, mut image_blobs) = platform_manifest(image)?;
        let platform = PlatformBuilder::default()
            .architecture(image.arch.clone())
            .os(Os::Linux)
            .build()?;
        let mut d = descriptor(MediaType::ImageManifest, &manifest, None)?;
        d.set_platform(Some(platform));
        manifests.push(d);
        blobs.append(&mut image_blobs);
        blobs.push(manifest);
    }
    if manifests.is_empty() {
        return Err("an image index needs at least one image".into());
    }
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()?;
    let index_blob = canonical_json(&index)?;
    let tag = reference
        .rsplit_once(':')
        .map_or("latest", |(_, t)| t)
        .to_string();
    let mut names = BTreeMap::new();
    names.insert(
        "io.containerd.image.name".to_string(),
        reference.to_string(),
    );
    names.insert("org.opencontainers.image.ref.name".to_string(), tag);
    let layout_index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![descriptor(
            MediaType::ImageIndex,
            &index_blob,
            Some(names),
        )?])
        .build()?;
    blobs.push(index_blob);
    layout_tar(&canonical_json(&layout_index)?, &blobs)
}

/// One image's manifest, and the blobs it names (its config and layer).
fn platform_manifest(image: &Image) -> Result<(Vec<u8>, Vec<Vec<u8>>)> {
    let tar = layer_tar(&image.entries)?;
    let layer = gzip(&tar)?;
    let config = ImageConfigurationBuilder::default()
        .architecture(image.arch.clone())
        .os(Os::Linux)
        .config(
            ConfigBuilder::default()
                .labels(
                    image
                        .labels
                        .clone()
                        .into_iter()
                        .collect::<std::collections::HashMap<_, _>>(),
                )
                .entrypoint(vec![image.entrypoint.clone()])
                .build()?,
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![sha256(&tar)])
                .build()?,
        )
        .build()?;
    let config_json = canonical_json(&config)?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(MediaType::ImageConfig, &config_json, None)?)
        .layers(vec![descriptor(MediaType::ImageLayerGzip, &layer, None)?])
        .annotations(
            image
                .labels
                .clone()
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        )
        .build()?;
    Ok((canonical_json(&manifest)?, vec![config_json, layer]))
}

/// The image layout as a tar: oci-layout, index.json and the blobs by
/// digest (a blob two images share is written once).
fn layout_tar(index_json: &[u8], blobs: &[Vec<u8>]) -> Result<Vec<u8>> {
    let mut out = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        out.append_data(&mut header, path, data)
            .map_err(|e| io::Error::other(format!("{path}: {e}")).into())
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json", index_json)?;
    let mut written = std::collections::BTreeSet::new();
    for blob in blobs {
        let digest = sha256(blob);
        if written.insert(digest.clone()) {
            add(
                &format!("blobs/sha256/{}", &digest["sha256:".len()..]),
                blob,
            )?;
        }
    }
    Ok(out.into_inner()?)
}

/// `hello`, `jitsu/hello:1` → `docker.io/library/hello:latest`, `docker.io/jitsu/hello:1`.
pub fn normalize_reference(name: &str) -> String {
    let (repo, tag) = match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (name, "latest"),
    };
    let first = repo.split('/').next().unwrap_or("");
    let has_registry =
        repo.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let repo = match (has_registry, repo.contains('/')) {
        (true, _) => repo.to_string(),
        (false, true) => format!("docker.io/{repo}"),
        (false, false) => format!("docker.io/library/{repo}"),
    };
    format!("{repo}:{tag}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(
            normalize_reference("hello"),
            "docker.io/library/hello:latest"
        );
        assert_eq!(
            normalize_reference("jitsu/hello:v1"),
            "docker.io/jitsu/hello:v1"
        );
        assert_eq!(
            normalize_reference("localhost:5000/hello"),
            "localhost:5000/hello:latest"
        );
        assert_eq!(normalize_reference("ghcr.io/a/b:c"), "ghcr.io/a/b:c");
    }

    #[test]
    fn same_inputs_same_archive() {
        let files = [File {
            path: "k.elf",
            mode: 0o755,
            data: b"\x7fELF",
        }];
        let a = image_archive(
            &files,
            BTreeMap::new(),
            "/k.elf",
            "docker.io/library/x:latest",
        )
        .unwrap();
        let b = image_archive(
            &files,
            BTreeMap::new(),
            "/k.elf",
            "docker.io/library/x:latest",
        )
        .unwrap();
        assert_eq!(a, b);
    }
    /// The archive's files by path.
    fn files_of(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        for entry in tar::Archive::new(archive).entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            io::Read::read_to_end(&mut entry, &mut data).unwrap();
            out.insert(path, data);
        }
        out
    }

    fn blob(files: &BTreeMap<String, Vec<u8>>, digest: &str) -> serde_json::Value {
        let path = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
        let bytes = files.get(&path).unwrap_or_else(|| panic!("{path} missing"));
        assert_eq!(sha256(bytes), digest, "{path} is what its name says");
        serde_json::from_slice(bytes).unwrap()
    }

    fn kernel_image(arch: Arch, data: &[u8]) -> Image<'_> {
        Image {
            arch,
            entries: vec![Entry::File(File {
                path: "k.elf",
                mode: 0o755,
                data,
            })],
            labels: BTreeMap::from([("org.jitsu.mem".to_string(), "16M".to_string())]),
            entrypoint: "/k.elf".to_string(),
        }
    }

    #[test]
    fn one_name_for_a_manifest_per_platform() {
        let archive = index_archive(
            &[
                kernel_image(Arch::Amd64, b"x86"),
                kernel_image(Arch::ARM64, b"arm"),
            ],
            "docker.io/jitsu/k:1",
        )
        .unwrap();
        let files = files_of(&archive);
        let top: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
        let named = &top["manifests"][0];
        assert_eq!(top["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(
            named["mediaType"],
            "application/vnd.oci.image.index.v1+json"
        );
        assert_eq!(
            named["annotations"]["io.containerd.image.name"],
            "docker.io/jitsu/k:1"
        );
        let index = blob(&files, named["digest"].as_str().unwrap());
        let platforms: Vec<(String, String)> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let manifest = blob(&files, m["digest"].as_str().unwrap());
                let config = blob(&files, manifest["config"]["digest"].as_str().unwrap());
                assert_eq!(m["platform"]["architecture"], config["architecture"]);
                assert_eq!(manifest["annotations"]["org.jitsu.mem"], "16M");
                (
                    m["platform"]["os"].as_str().unwrap().to_string(),
                    m["platform"]["architecture"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            platforms,
            [
                ("linux".to_string(), "amd64".to_string()),
                ("linux".to_string(), "arm64".to_string())
            ]
        );
    }

    #[test]
    fn an_index_needs_one_image_per_platform() {
        let twice = index_archive(
            &[
                kernel_image(Arch::ARM64, b"a"),
                kernel_image(Arch::ARM64, b"b"),
            ],
            "docker.io/jitsu/k:1",
        );
        assert!(twice
            .unwrap_err()
            .to_string()
            .contains("two images for arm64"));
        assert!(index_archive(&[], "docker.io/jitsu/k:1").is_err());
    }
}
