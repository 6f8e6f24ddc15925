//! Writing an OCI image archive (an image layout in a tar), as
//! `ctr images import` and registries take it. `jitsu pack` uses it for
//! unikernel images; the benchmarks for the native images they compare with.

use std::collections::BTreeMap;
use std::io::Write;

use std::io;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
use flate2::write::GzEncoder;
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, ImageConfigurationBuilder,
    ImageIndexBuilder, ImageManifestBuilder, MediaType, Os, RootFsBuilder,
};
use sha2::{Digest as _, Sha256};

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

/// Builds the archive: one layer with `files`, `labels` on the config, the
/// image named `reference` (e.g. `docker.io/jitsu/hello:latest`).
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
    let tar = layer_tar(entries)?;
    let layer = gzip(&tar)?;
    let config = ImageConfigurationBuilder::default()
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(
            ConfigBuilder::default()
                .labels(
                    labels
                        .clone()
                        .into_iter()
                        .collect::<std::collections::HashMap<_, _>>(),
                )
                .entrypoint(vec![entrypoint.to_string()])
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
            labels
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        )
        .build()?;
    let manifest_json = canonical_json(&manifest)?;
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
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![descriptor(
            MediaType::ImageManifest,
            &manifest_json,
            Some(names),
        )?])
        .build()?;
    let index_json = canonical_json(&index)?;

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
    add("index.json", &index_json)?;
    for blob in [&config_json, &layer, &manifest_json] {
        let digest = sha256(blob);
        add(
            &format!("blobs/sha256/{}", &digest["sha256:".len()..]),
            blob,
        )?;
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
}
