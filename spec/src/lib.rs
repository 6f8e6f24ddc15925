//! The unikernel's spec: what an image says about its unikernel (the
//! `jitsu.json` file at the root of its filesystem, also as image labels),
//! overridden by `org.jitsu.*` annotations of the container, checked once
//! into a [`UnikernelSpec`]. `jitsu pack` checks it when it builds an image,
//! the shim again when it creates a container.

#[cfg(feature = "archive")]
pub mod archive;
pub mod units;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The metadata file at the root of the image's filesystem.
pub const METADATA_FILE: &str = "jitsu.json";
/// Annotations (and image labels) carrying the same keys.
pub const ANNOTATION_PREFIX: &str = "org.jitsu.";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("{METADATA_FILE}: {0}")]
    Json(String),
    #[error("no kernel: the metadata must name the unikernel ELF (\"kernel\")")]
    MissingKernel,
    #[error("kernel path {0:?} must stay inside the image (no \"..\")")]
    KernelPath(String),
    #[error("memory {0}")]
    Memory(String),
    #[error("idle timeout: {0}")]
    IdleTimeout(String),
    #[error("DNS name {0:?} is not a DNS label (a-z, 0-9, '-', at most 63)")]
    DnsName(String),
    #[error("command line: {0}")]
    Cmdline(String),
    #[error("Conduit name {0:?} is not a DNS label (a-z, 0-9, '-', at most 63)")]
    ConduitName(String),
    #[error("Conduit allow-list: {0}")]
    ConduitAllow(String),
    #[error(
        "unknown annotation {0} (known: kernel, xen-kernel, hypervisor, mem, cmdline, dns-name, idle-timeout, boot, ports, conduit, conduit-allow)"
    )]
    UnknownAnnotation(String),
    #[error("annotation {key}: {reason}")]
    BadAnnotation { key: String, reason: String },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootPolicy {
    /// Parked until a packet, a lookup or a request.
    #[default]
    Lazy,
    /// Booted as soon as the container starts.
    Eager,
}

/// Which hypervisor runs a unikernel. Absent (or `auto` in an annotation):
/// the node's own (Xen in a Xen dom0, else KVM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hypervisor {
    Kvm,
    Xen,
}

impl Hypervisor {
    pub fn name(self) -> &'static str {
        match self {
            Hypervisor::Kvm => "kvm",
            Hypervisor::Xen => "xen",
        }
    }

    /// This node's: Xen where `/proc/xen` says this is dom0, else KVM.
    pub fn of_this_node() -> Hypervisor {
        let dom0 = std::fs::read_to_string("/proc/xen/capabilities")
            .is_ok_and(|c| c.contains("control_d"));
        if dom0 {
            Hypervisor::Xen
        } else {
            Hypervisor::Kvm
        }
    }

    /// `kvm`, `xen`, or `auto` (None).
    pub fn parse_choice(text: &str) -> Result<Option<Hypervisor>, String> {
        match text {
            "auto" => Ok(None),
            "kvm" => Ok(Some(Hypervisor::Kvm)),
            "xen" => Ok(Some(Hypervisor::Xen)),
            other => Err(format!("{other:?} is none of kvm, xen, auto")),
        }
    }
}

/// The metadata as written in `jitsu.json`. Unknown keys are refused, so a
/// typo is an error rather than a silently ignored setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Metadata {
    /// The unikernel ELF (the KVM build, or the only one).
    pub kernel: String,
    /// The Xen PVH build of the same unikernel, when the image carries both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xen_kernel: Option<String>,
    /// The hypervisor it must run on (absent: the node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypervisor: Option<Hypervisor>,
    #[serde(default = "default_mem")]
    pub mem: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cmdline: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    #[serde(default)]
    pub boot: BootPolicy,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// The unikernel's Conduit name: other unikernels on the node reach it
    /// by it (a connection boots it when parked), and it may connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conduit: Option<String>,
    /// Who besides its own group (Kubernetes namespace) may connect:
    /// comma-separated NAME, GROUP/NAME or GROUP/*.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub conduit_allow: String,
}

fn default_mem() -> String {
    "16M".into()
}

/// A checked spec, ready for the monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnikernelSpec {
    /// Relative to the root of the image's filesystem.
    pub kernel: PathBuf,
    pub xen_kernel: Option<PathBuf>,
    pub hypervisor: Option<Hypervisor>,
    pub mem: u64,
    pub cmdline: String,
    pub dns_name: Option<String>,
    pub idle_timeout: Option<Duration>,
    pub boot: BootPolicy,
    pub ports: Vec<u16>,
    pub conduit: Option<String>,
    pub conduit_allow: String,
}

impl UnikernelSpec {
    /// The ELF for `hypervisor`, if the image has one: on Xen the Xen
    /// build, or `kernel` of an image that says it is for Xen; on KVM
    /// `kernel`, unless the image says it is for Xen.
    pub fn kernel_for(&self, hypervisor: Hypervisor) -> Option<&Path> {
        let for_xen = self.hypervisor == Some(Hypervisor::Xen);
        match hypervisor {
            Hypervisor::Xen => self
                .xen_kernel
                .as_deref()
                .or(for_xen.then_some(self.kernel.as_path())),
            Hypervisor::Kvm => (!for_xen).then_some(self.kernel.as_path()),
        }
    }
}

impl Metadata {
    pub fn new(kernel: &str) -> Metadata {
        Metadata {
            kernel: kernel.into(),
            xen_kernel: None,
            hypervisor: None,
            mem: default_mem(),
            cmdline: String::new(),
            dns_name: None,
            idle_timeout: None,
            boot: BootPolicy::Lazy,
            ports: Vec::new(),
            conduit: None,
            conduit_allow: String::new(),
        }
    }

    pub fn parse(json: &[u8]) -> Result<Metadata, SpecError> {
        serde_json::from_slice(json).map_err(|e| SpecError::Json(e.to_string()))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Applies `org.jitsu.*` annotations; other annotations are not ours.
    pub fn apply_annotations<'a>(
        &mut self,
        annotations: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<(), SpecError> {
        for (key, value) in annotations {
            let Some(name) = key.strip_prefix(ANNOTATION_PREFIX) else {
                continue;
            };
            let bad = |reason: String| SpecError::BadAnnotation {
                key: key.clone(),
                reason,
            };
            match name {
                "kernel" => self.kernel = value.clone(),
                "xen-kernel" => self.xen_kernel = Some(value.clone()),
                "hypervisor" => self.hypervisor = Hypervisor::parse_choice(value).map_err(bad)?,
                "mem" => {
                    // Checked here too, so that the error names the annotation.
                    units::parse_size(value).map_err(bad)?;
                    self.mem = value.clone()
                }
                "cmdline" => self.cmdline = value.clone(),
                "dns-name" => self.dns_name = Some(value.clone()),
                "idle-timeout" => {
                    units::parse_duration(value).map_err(bad)?;
                    self.idle_timeout = Some(value.clone())
                }
                "boot" => {
                    self.boot = match value.as_str() {
                        "lazy" => BootPolicy::Lazy,
                        "eager" => BootPolicy::Eager,
                        other => return Err(bad(format!("{other:?} is neither lazy nor eager"))),
                    }
                }
                "ports" => {
                    self.ports = value
                        .split(',')
                        .filter(|p| !p.trim().is_empty())
                        .map(|p| {
                            p.trim()
                                .parse::<u16>()
                                .map_err(|_| bad(format!("{p:?} is not a port")))
                        })
                        .collect::<Result<_, _>>()?
                }
                "conduit" => self.conduit = Some(value.clone()),
                "conduit-allow" => self.conduit_allow = value.clone(),
                _ => return Err(SpecError::UnknownAnnotation(key.clone())),
            }
        }
        Ok(())
    }

    /// The same settings as `org.jitsu.*` labels, for the image config.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            labels.insert(format!("{ANNOTATION_PREFIX}{k}"), v);
        };
        put("kernel", self.kernel.clone());
        if let Some(xen) = &self.xen_kernel {
            put("xen-kernel", xen.clone());
        }
        if let Some(h) = self.hypervisor {
            put("hypervisor", h.name().into());
        }
        put("mem", self.mem.clone());
        put(
            "boot",
            if self.boot == BootPolicy::Eager {
                "eager"
            } else {
                "lazy"
            }
            .into(),
        );
        if !self.cmdline.is_empty() {
            put("cmdline", self.cmdline.clone());
        }
        if let Some(name) = &self.dns_name {
            put("dns-name", name.clone());
        }
        if let Some(t) = &self.idle_timeout {
            put("idle-timeout", t.clone());
        }
        if let Some(name) = &self.conduit {
            put("conduit", name.clone());
        }
        if !self.conduit_allow.is_empty() {
            put("conduit-allow", self.conduit_allow.clone());
        }
        if !self.ports.is_empty() {
            put(
                "ports",
                self.ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        labels
    }

    pub fn validate(&self) -> Result<UnikernelSpec, SpecError> {
        let kernel = kernel_path(&self.kernel)?;
        let xen_kernel = self.xen_kernel.as_deref().map(kernel_path).transpose()?;
        let mem = units::parse_size(&self.mem).map_err(SpecError::Memory)?;
        let limits = jitsu_abi::layout::MEM_MIN..=jitsu_abi::layout::MEM_MAX;
        if !limits.contains(&mem) || mem % jitsu_abi::layout::MEM_ALIGN != 0 {
            return Err(SpecError::Memory(format!(
                "{} is out of range: a multiple of 2M from 2M to 4G",
                self.mem
            )));
        }
        jitsu_abi::check_cmdline(&self.cmdline).map_err(|e| SpecError::Cmdline(e.to_string()))?;
        if let Some(name) = &self.dns_name {
            if !jitsu_registry::valid_name(name) {
                return Err(SpecError::DnsName(name.clone()));
            }
        }
        if let Some(name) = &self.conduit {
            if !jitsu_registry::valid_name(name) {
                return Err(SpecError::ConduitName(name.clone()));
            }
        }
        check_allow_list(&self.conduit_allow)?;
        let idle_timeout = self
            .idle_timeout
            .as_deref()
            .map(units::parse_duration)
            .transpose()
            .map_err(SpecError::IdleTimeout)?;
        Ok(UnikernelSpec {
            kernel,
            xen_kernel,
            hypervisor: self.hypervisor,
            mem,
            cmdline: self.cmdline.clone(),
            dns_name: self.dns_name.clone(),
            idle_timeout,
            boot: self.boot,
            ports: self.ports.clone(),
            conduit: self.conduit.clone(),
            conduit_allow: self.conduit_allow.clone(),
        })
    }
}

/// An allow-list's entries: NAME, GROUP/NAME or GROUP/* (DNS labels),
/// comma-separated (the monitor reads the same syntax).
fn check_allow_list(list: &str) -> Result<(), SpecError> {
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let ok = match entry.split_once('/') {
            None => jitsu_registry::valid_name(entry),
            Some((group, "*")) => jitsu_registry::valid_name(group),
            Some((group, name)) => {
                jitsu_registry::valid_name(group) && jitsu_registry::valid_name(name)
            }
        };
        if !ok {
            return Err(SpecError::ConduitAllow(format!(
                "{entry:?}: want NAME, GROUP/NAME or GROUP/* (DNS labels)"
            )));
        }
    }
    Ok(())
}

fn kernel_path(raw: &str) -> Result<PathBuf, SpecError> {
    if raw.trim().is_empty() {
        return Err(SpecError::MissingKernel);
    }
    let mut out = PathBuf::new();
    for part in Path::new(raw).components() {
        match part {
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(SpecError::KernelPath(raw.into()))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(SpecError::MissingKernel);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_conduit_name_and_allow_list_are_checked_and_carried() {
        let mut m = Metadata::new("counter");
        let annotations: BTreeMap<String, String> = [
            ("org.jitsu.conduit", "counter"),
            ("org.jitsu.conduit-allow", "web, team-b/*, ops/pager"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        m.apply_annotations(&annotations).unwrap();
        let spec = m.validate().unwrap();
        assert_eq!(spec.conduit.as_deref(), Some("counter"));
        assert_eq!(spec.conduit_allow, "web, team-b/*, ops/pager");
        assert_eq!(m.labels()["org.jitsu.conduit"], "counter");
        let mut bad = Metadata::new("counter");
        bad.conduit = Some("Counter".into());
        assert_eq!(
            bad.validate(),
            Err(SpecError::ConduitName("Counter".into()))
        );
        bad.conduit = Some("counter".into());
        bad.conduit_allow = "web, */x".into();
        assert!(matches!(bad.validate(), Err(SpecError::ConduitAllow(e)) if e.contains("*/x")));
    }

    #[test]
    fn parses_defaults_and_refuses_unknown_keys() {
        let m = Metadata::parse(br#"{"kernel": "/unikernel.elf"}"#).unwrap();
        let spec = m.validate().unwrap();
        assert_eq!(
            (spec.kernel, spec.mem, spec.boot),
            (PathBuf::from("unikernel.elf"), 16 << 20, BootPolicy::Lazy)
        );
        assert!(
            matches!(Metadata::parse(br#"{"kernel": "k", "memory": "1G"}"#), Err(SpecError::Json(e)) if e.contains("unknown field"))
        );
        assert!(
            matches!(
                Metadata::parse(br#"{"mem": "1G"}"#),
                Err(SpecError::Json(_))
            ),
            "kernel is required"
        );
    }

    #[test]
    fn an_image_may_carry_a_xen_build_and_require_a_hypervisor() {
        let m = Metadata::parse(
            br#"{"kernel": "hello", "xen-kernel": "/xen/hello", "hypervisor": "xen"}"#,
        )
        .unwrap();
        let spec = m.validate().unwrap();
        assert_eq!(
            spec.kernel_for(Hypervisor::Xen),
            Some(Path::new("xen/hello"))
        );
        assert_eq!(
            spec.kernel_for(Hypervisor::Kvm),
            None,
            "it says it is for Xen"
        );
        assert_eq!(spec.hypervisor, Some(Hypervisor::Xen));
        // An image with one build and no word on the hypervisor (packed
        // before images could carry a Xen build) is a KVM one.
        let old = Metadata::new("hello").validate().unwrap();
        assert_eq!(old.kernel_for(Hypervisor::Kvm), Some(Path::new("hello")));
        assert_eq!(old.kernel_for(Hypervisor::Xen), None);
        let mut m = Metadata::new("hello");
        let auto = [("org.jitsu.hypervisor".to_string(), "auto".to_string())];
        m.apply_annotations(auto.iter().map(|(k, v)| (k, v)))
            .unwrap();
        assert_eq!(m.validate().unwrap().hypervisor, None);
        let bad = [("org.jitsu.hypervisor".to_string(), "hyperv".to_string())];
        assert!(matches!(
            m.apply_annotations(bad.iter().map(|(k, v)| (k, v))),
            Err(SpecError::BadAnnotation { .. })
        ));
        m.xen_kernel = Some("../escape".into());
        assert!(matches!(m.validate(), Err(SpecError::KernelPath(_))));
        // Both survive the round trip through labels.
        m.xen_kernel = Some("xen/hello".into());
        m.hypervisor = Some(Hypervisor::Kvm);
        let mut back = Metadata::new("other");
        let labels = m.labels();
        back.apply_annotations(labels.iter()).unwrap();
        assert_eq!(
            (back.xen_kernel, back.hypervisor),
            (m.xen_kernel, m.hypervisor)
        );
    }

    #[test]
    fn refuses_bad_values() {
        let check = |f: fn(&mut Metadata)| {
            let mut m = Metadata::new("k.elf");
            f(&mut m);
            m.validate()
        };
        assert!(matches!(
            check(|m| m.mem = "1M".into()),
            Err(SpecError::Memory(_))
        ));
        assert!(matches!(
            check(|m| m.mem = "3M".into()),
            Err(SpecError::Memory(_))
        ));
        assert!(matches!(
            check(|m| m.mem = "8G".into()),
            Err(SpecError::Memory(_))
        ));
        assert!(matches!(
            check(|m| m.mem = "lots".into()),
            Err(SpecError::Memory(_))
        ));
        assert_eq!(
            check(|m| m.kernel = "../../etc/passwd".into()),
            Err(SpecError::KernelPath("../../etc/passwd".into()))
        );
        assert_eq!(
            check(|m| m.kernel = " ".into()),
            Err(SpecError::MissingKernel)
        );
        assert!(matches!(
            check(|m| m.dns_name = Some("Bad_Name".into())),
            Err(SpecError::DnsName(_))
        ));
        assert!(matches!(
            check(|m| m.idle_timeout = Some("soon".into())),
            Err(SpecError::IdleTimeout(_))
        ));
    }

    #[test]
    fn annotations_override_and_unknown_ones_are_refused() {
        let mut m = Metadata::new("k.elf");
        let ann: BTreeMap<String, String> = [
            ("org.jitsu.boot", "eager"),
            ("org.jitsu.mem", "64M"),
            ("org.jitsu.ports", "80, 443"),
            ("io.kubernetes.cri.sandbox-id", "abc"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        m.apply_annotations(&ann).unwrap();
        let spec = m.validate().unwrap();
        assert_eq!(
            (spec.boot, spec.mem, spec.ports),
            (BootPolicy::Eager, 64 << 20, vec![80, 443])
        );
        let bad: BTreeMap<String, String> =
            [("org.jitsu.colour".to_string(), "red".to_string())].into();
        assert_eq!(
            m.apply_annotations(&bad),
            Err(SpecError::UnknownAnnotation("org.jitsu.colour".into()))
        );
        for (key, value) in [
            ("org.jitsu.mem", "lots"),
            ("org.jitsu.idle-timeout", "soon"),
        ] {
            let bad: BTreeMap<String, String> = [(key.to_string(), value.to_string())].into();
            let err = m.apply_annotations(&bad).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(value), "{err}");
        }
        let bad: BTreeMap<String, String> =
            [("org.jitsu.boot".to_string(), "maybe".to_string())].into();
        assert!(matches!(
            m.apply_annotations(&bad),
            Err(SpecError::BadAnnotation { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_json_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(m) = Metadata::parse(&bytes) {
                let _ = m.validate();
            }
        }

        #[test]
        fn labels_round_trip_as_annotations(mem in 1u64..2048, eager in any::<bool>(), cmdline in "[a-z ]{0,20}", ports in proptest::collection::vec(1u16.., 0..4)) {
            let mut m = Metadata::new("boot/k.elf");
            m.mem = format!("{}M", mem * 2);
            m.boot = if eager { BootPolicy::Eager } else { BootPolicy::Lazy };
            m.cmdline = cmdline;
            m.ports = ports;
            let mut back = Metadata::new("other");
            back.apply_annotations(&m.labels()).unwrap();
            prop_assert_eq!(back, m);
        }
    }
}
