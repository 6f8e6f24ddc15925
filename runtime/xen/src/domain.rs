//! One unikernel as a Xen domain: built paused (kernel checked first, vif on
//! its bridge, network settings in the domain's XenStore home), its console
//! relayed, unpaused, and destroyed when it ends or is stopped. Dropping a
//! [`Domain`] destroys it, so no path leaves a domain or vif behind.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use thiserror::Error;

use crate::image::{self, ImageError};
use crate::report::{Outcome, Report};
use crate::toolstack::{DomainSpec, DomainState, Toolstack, ToolstackError};

/// Guest memory Xen domains may have here: what a PVH guest's page tables
/// (ours map 4 GiB) and a small node can hold.
pub const MIN_MEMORY: u64 = 4 << 20;
pub const MAX_MEMORY: u64 = 4 << 30;

/// The vif and what the guest is told about its network.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub bridge: String,
    pub mac: [u8; 6],
    pub ipv4: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    /// The link's MTU (the bridge's), when the guest must keep under 1500.
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct DomainConfig {
    /// The domain's name in Xen (`xl list`); unique on the host.
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub memory: u64,
    pub net: Option<NetConfig>,
    /// The guest's Conduit name (the SDK reads `jitsu/conduit`).
    pub conduit: Option<String>,
}

#[derive(Debug, Error)]
pub enum DomainError {
    #[error("kernel {path}: {err}")]
    Image { path: PathBuf, err: ImageError },
    #[error("memory {0} bytes is out of range ({MIN_MEMORY}..={MAX_MEMORY}, a multiple of 1 MiB)")]
    Memory(u64),
    #[error("domain name {0:?}: want 1 to 64 of a-z, A-Z, 0-9, '-', '_', '.'")]
    Name(String),
    #[error(transparent)]
    Bridge(#[from] crate::bridge::BridgeError),
    #[error(transparent)]
    Toolstack(#[from] ToolstackError),
    #[error("console: {0}")]
    Console(std::io::Error),
    #[error("waiting for the domain: {0}")]
    Wait(nix::Error),
}

/// A built domain. Destroyed on drop unless [`Domain::finish`] did it.
pub struct Domain {
    toolstack: Rc<Toolstack>,
    domid: u32,
    console: Option<OwnedFd>,
    created: Instant,
    unpaused: Option<Instant>,
    first_console_byte: Option<Instant>,
    destroyed: bool,
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl Domain {
    /// Checks everything that can be checked, then builds the domain,
    /// paused. The vif's bridge must exist ([`crate::bridge::Bridge::ensure`]).
    pub fn create_paused(
        toolstack: Rc<Toolstack>,
        config: &DomainConfig,
    ) -> Result<Domain, DomainError> {
        image::check_file(&config.kernel).map_err(|err| DomainError::Image {
            path: config.kernel.clone(),
            err,
        })?;
        if let Some(initrd) = &config.initrd {
            std::fs::metadata(initrd).map_err(|e| DomainError::Image {
                path: initrd.clone(),
                err: ImageError::Read(e),
            })?;
        }
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&config.memory) || config.memory % (1 << 20) != 0 {
            return Err(DomainError::Memory(config.memory));
        }
        if !valid_name(&config.name) {
            return Err(DomainError::Name(config.name.clone()));
        }
        let spec = DomainSpec {
            name: &config.name,
            kernel: &config.kernel,
            ramdisk: config.initrd.as_deref(),
            cmdline: &config.cmdline,
            memory_kib: config.memory >> 10,
            vcpus: 1,
            vif: config.net.as_ref().map(|n| (n.bridge.as_str(), n.mac)),
        };
        let created = Instant::now();
        let domid = toolstack.create_paused(&spec)?;
        tracing::debug!(domid, name = %config.name, "domain built, paused");
        let mut domain = Domain {
            toolstack,
            domid,
            console: None,
            created,
            unpaused: None,
            first_console_byte: None,
            destroyed: false,
        };
        // From here on, an error drops `domain`, which destroys it.
        if let Some(net) = &config.net {
            domain.write_net(net)?;
        }
        if let Some(name) = &config.conduit {
            let key = format!("/local/domain/{domid}/jitsu/conduit");
            domain.toolstack.write(&key, name)?;
        }
        domain.console = domain.open_console()?;
        Ok(domain)
    }

    /// The settings a Jitsu guest reads at start (see the SDK's xen_pvh/netconfig.rs).
    fn write_net(&self, net: &NetConfig) -> Result<(), DomainError> {
        let home = format!("/local/domain/{}/jitsu", self.domid);
        self.toolstack.write(
            &format!("{home}/ipv4"),
            &format!("{}/{}", net.ipv4, net.prefix_len),
        )?;
        if let Some(gw) = net.gateway {
            self.toolstack
                .write(&format!("{home}/gateway"), &gw.to_string())?;
        }
        if let Some(mtu) = net.mtu {
            self.toolstack
                .write(&format!("{home}/mtu"), &mtu.to_string())?;
        }
        Ok(())
    }

    /// The console's pty, in raw mode, non-blocking.
    fn open_console(&self) -> Result<Option<OwnedFd>, DomainError> {
        let Some(tty) = self.toolstack.console_tty(self.domid) else {
            tracing::warn!(domid = self.domid, "the domain has no console pty");
            return Ok(None);
        };
        let fd = nix::fcntl::open(
            tty.as_str(),
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| DomainError::Console(std::io::Error::other(format!("{tty}: {e}"))))?;
        let mut termios = nix::sys::termios::tcgetattr(&fd)
            .map_err(|e| DomainError::Console(std::io::Error::other(format!("{tty}: {e}"))))?;
        nix::sys::termios::cfmakeraw(&mut termios);
        nix::sys::termios::tcsetattr(&fd, nix::sys::termios::SetArg::TCSANOW, &termios)
            .map_err(|e| DomainError::Console(std::io::Error::other(format!("{tty}: {e}"))))?;
        Ok(Some(fd))
    }

    pub fn domid(&self) -> u32 {
        self.domid
    }

    pub fn unpause(&mut self) -> Result<(), DomainError> {
        self.toolstack.unpause(self.domid)?;
        self.unpaused.get_or_insert_with(Instant::now);
        Ok(())
    }

    pub fn pause(&self) -> Result<(), DomainError> {
        Ok(self.toolstack.pause(self.domid)?)
    }

    pub fn toolstack(&self) -> &Toolstack {
        &self.toolstack
    }

    /// The console's pty, for a relay of the caller's (see
    /// [`crate::console`]); [`Domain::finish`] then relays nothing itself.
    pub fn take_console(&mut self) -> Option<OwnedFd> {
        self.console.take()
    }

    /// Readable when there is console output to relay.
    pub fn console_fd(&self) -> Option<BorrowedFd<'_>> {
        self.console.as_ref().map(|fd| fd.as_fd())
    }

    /// Copies what the console has to `out`; false once it is closed.
    pub fn relay_console(&mut self, out: &mut impl Write) -> bool {
        let Some(fd) = &self.console else {
            return false;
        };
        let mut buf = [0u8; 4096];
        loop {
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => return false,
                Ok(n) => {
                    self.first_console_byte.get_or_insert_with(Instant::now);
                    // Console output must not stop the monitor: a broken
                    // stdout loses the text, not the guest.
                    let _ = out.write_all(&buf[..n]);
                    let _ = out.flush();
                }
                Err(nix::Error::EAGAIN) => return true,
                Err(nix::Error::EINTR) => continue,
                // EIO: xenconsoled closed its end (the domain is going).
                Err(_) => return false,
            }
        }
    }

    /// A descriptor, readable when any domain changes state: then call
    /// [`Domain::ended`].
    pub fn watch(&self) -> Result<BorrowedFd<'_>, DomainError> {
        Ok(self.toolstack.watch_domains()?)
    }

    /// Whether the domain has ended (shut down, crashed, or vanished).
    pub fn ended(&self) -> Result<bool, DomainError> {
        self.toolstack.drain_watch();
        Ok(!matches!(
            self.toolstack.state(self.domid)?,
            DomainState::Running { .. }
        ))
    }

    /// Reads how the domain ended (its status, its registers after a
    /// crash), relays the console's last lines, and destroys it.
    pub fn finish(mut self, out: &mut impl Write, stopped: bool) -> Result<Report, DomainError> {
        let state = self.toolstack.state(self.domid)?;
        let outcome = match state {
            _ if stopped => Outcome::Stopped,
            DomainState::Shutdown { reason: 0 } => {
                let status = self
                    .toolstack
                    .read(&format!("/local/domain/{}/data/exit-status", self.domid))
                    .and_then(|s| s.trim().parse::<u8>().ok());
                Outcome::Exited(status.unwrap_or(0))
            }
            DomainState::Shutdown { reason: 1 } => Outcome::Rebooted,
            DomainState::Shutdown { reason } => Outcome::Crashed {
                reason: shutdown_reason(reason),
                registers: self.toolstack.registers(self.domid),
            },
            DomainState::Running { .. } => Outcome::Stopped,
            DomainState::Dying | DomainState::Gone => Outcome::Vanished,
        };
        self.drain_console(out)?;
        let destroyed = self.destroy();
        let report = Report {
            outcome,
            created_to_unpaused: self.unpaused.map(|u| u - self.created),
            unpaused_to_console: match (self.unpaused, self.first_console_byte) {
                (Some(u), Some(c)) => Some(c.saturating_duration_since(u)),
                _ => None,
            },
        };
        destroyed?;
        Ok(report)
    }

    /// The console's last bytes: xenconsoled may still be copying the ring
    /// into the pty when the domain's end is seen; read until it has been
    /// quiet a moment.
    fn drain_console(&mut self, out: &mut impl Write) -> Result<(), DomainError> {
        const QUIET: Duration = Duration::from_millis(200);
        while let Some(fd) = self.console_fd() {
            let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
            let n = poll(&mut fds, PollTimeout::from(QUIET.as_millis() as u16))
                .map_err(DomainError::Wait)?;
            if n == 0 || !self.relay_console(out) {
                break;
            }
        }
        Ok(())
    }

    fn destroy(&mut self) -> Result<(), DomainError> {
        if self.destroyed {
            return Ok(());
        }
        self.console = None;
        let result = self.toolstack.destroy(self.domid);
        // Marked even on failure: a second attempt would fail the same way.
        self.destroyed = true;
        if result.is_ok() {
            tracing::debug!(domid = self.domid, "domain destroyed");
        }
        Ok(result?)
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        if let Err(err) = self.destroy() {
            tracing::error!(domid = self.domid, "cannot destroy the domain: {err}");
        }
    }
}

fn shutdown_reason(reason: i32) -> &'static str {
    match reason {
        2 => "suspended",
        3 => "crashed",
        4 => "stopped by its watchdog",
        5 => "asked for a soft reset",
        _ => "shut down for an unknown reason",
    }
}
