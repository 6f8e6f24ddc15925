//! A monitor's Conduit: its flags, the listener socket it binds while it is
//! still root, and the broker it starts once jailed (see `jitsu-conduit`).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use jitsu_conduit::{Broker, BrokerConfig, Dir, Policy};

#[derive(Args)]
pub struct ConduitArgs {
    /// The unikernel's Conduit name (a DNS label): it gets the conduit
    /// device, may listen under this name and connect to others on the
    /// node; a connection to the name boots it if it is parked.
    #[arg(long = "conduit", id = "conduit", value_name = "NAME")]
    name: Option<String>,
    /// With --conduit: its group (a Kubernetes or containerd namespace);
    /// unikernels of the same group may connect to it.
    #[arg(
        long,
        value_name = "GROUP",
        default_value = "default",
        requires = "conduit"
    )]
    conduit_group: String,
    /// With --conduit: who else may connect, comma-separated: NAME,
    /// GROUP/NAME or GROUP/*.
    #[arg(long, value_name = "LIST", default_value = "", requires = "conduit")]
    conduit_allow: String,
    /// With --conduit: the node's directory of Conduit sockets.
    #[arg(long, value_name = "DIR", default_value = jitsu_conduit::anchor::DEFAULT_DIR, requires = "conduit")]
    conduit_dir: PathBuf,
}

/// What the monitor holds between binding (as root) and starting the
/// broker (jailed).
pub struct Bound {
    name: String,
    policy: Policy,
    dir: PathBuf,
    listener: OwnedFd,
    uid: u32,
}

impl ConduitArgs {
    /// Checks the flags and binds the name's socket for a monitor that
    /// will run as `uid`.
    pub fn bind(&self, uid: u32) -> Result<Option<Bound>> {
        let Some(name) = &self.name else {
            return Ok(None);
        };
        let policy = Policy::new(&self.conduit_group, &self.conduit_allow)?;
        let listener = Dir::new(&self.conduit_dir)
            .bind_listener(name, policy.group(), uid)
            .with_context(|| format!("Conduit name {name}"))?;
        Ok(Some(Bound {
            name: name.clone(),
            policy,
            dir: self.conduit_dir.clone(),
            listener,
            uid,
        }))
    }
}

impl Bound {
    /// The socket directory, which a jailed monitor sees read-only.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts the broker; `dir` and `xenstore` as this process sees them
    /// now (in the jail, or not).
    pub fn start(self, dir: PathBuf, xenstore: PathBuf) -> Result<Broker> {
        let identity = jitsu_registry::identity::domid_of_uid;
        let config = BrokerConfig {
            domid: identity(self.uid).unwrap_or(0),
            name: self.name,
            policy: self.policy,
            sockets: Some((Dir::new(dir), self.listener)),
            xenstore,
            identity,
            max_channels: jitsu_abi::conduit::SLOTS,
        };
        Broker::start(config).context("starting the Conduit broker")
    }
}
