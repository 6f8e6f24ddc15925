//! A private network namespace with one TAP whose host side has an address,
//! removed on drop. Set up with iproute2, as an operator would; the runtime
//! itself never shells out.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::process::Command;

use nix::sched::{setns, CloneFlags};

pub struct NetNs {
    name: String,
    pub tap: String,
    pub host_ip: Ipv4Addr,
    pub guest_ip: Ipv4Addr,
    pub prefix_len: u8,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// A namespace with only loopback up (containerd's shim makes its own
    /// bridge and TAPs in it).
    pub fn empty() -> NetNs {
        crate::require_root_and_kvm();
        let name = crate::unique_name("jc");
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        NetNs {
            name,
            tap: String::new(),
            host_ip: Ipv4Addr::new(10, 77, 0, 1),
            guest_ip: Ipv4Addr::new(10, 77, 0, 2),
            prefix_len: 16,
        }
    }

    /// A namespace with loopback up and TAP `jtap0` at 10.77.0.1/24; the guest
    /// is to take 10.77.0.2. These addresses exist only inside the namespace.
    pub fn with_tap() -> NetNs {
        crate::require_root_and_kvm();
        let name = crate::unique_name("jt");
        ip(&["netns", "add", &name]);
        let ns = NetNs {
            name,
            tap: "jtap0".into(),
            host_ip: Ipv4Addr::new(10, 77, 0, 1),
            guest_ip: Ipv4Addr::new(10, 77, 0, 2),
            prefix_len: 24,
        };
        let n = ns.name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"]);
        ip(&["-n", n, "tuntap", "add", "jtap0", "mode", "tap"]);
        ip(&["-n", n, "addr", "add", "10.77.0.1/24", "dev", "jtap0"]);
        ip(&["-n", n, "link", "set", "jtap0", "up"]);
        ns
    }

    /// A namespace with a bridge `br0` at 10.77.0.1/16 and no TAPs yet,
    /// for many guests at once (`add_bridge_tap`).
    pub fn with_bridge() -> NetNs {
        let ns = NetNs::empty();
        let n = ns.name.as_str();
        ip(&["-n", n, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", n, "addr", "add", "10.77.0.1/16", "dev", "br0"]);
        ip(&["-n", n, "link", "set", "br0", "up"]);
        ns
    }

    /// A TAP on `br0`, up.
    pub fn add_bridge_tap(&self, tap: &str) {
        ip(&["-n", &self.name, "tuntap", "add", tap, "mode", "tap"]);
        ip(&["-n", &self.name, "link", "set", tap, "master", "br0", "up"]);
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The MAC of the namespace's end of the TAP.
    pub fn tap_mac(&self) -> [u8; 6] {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-o", "link", "show", &self.tap])
            .output()
            .expect("ip link");
        let text = String::from_utf8_lossy(&out.stdout);
        let hex = text
            .split("link/ether ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("link/ether");
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(hex.split(':')) {
            *byte = u8::from_str_radix(part, 16).expect("hex");
        }
        mac
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// The HTTP status code curl gets for `url` from inside the namespace
    /// (`000` when it gets none).
    pub fn curl_status(&self, url: &str) -> String {
        let mut cmd = self.command("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ]);
        let out = crate::process::run_with_timeout(&mut cmd, std::time::Duration::from_secs(10));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `jitsu run` arguments that give the guest this namespace's TAP.
    pub fn jitsu_net_args(&self) -> Vec<String> {
        vec![
            "--net".into(),
            self.tap.clone(),
            "--ip".into(),
            format!("{}/{}", self.guest_ip, self.prefix_len),
            "--gw".into(),
            self.host_ip.to_string(),
        ]
    }

    /// Runs `f` on a thread that has entered the namespace, so that sockets
    /// it opens live there.
    /// The namespace's neighbour table, as `ip neigh` shows it.
    pub fn neighbours(&self) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-s", "neigh", "show"])
            .output()
            .expect("run ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let file = File::open(format!("/run/netns/{}", self.name)).expect("open netns");
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(file.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
                    f()
                })
                .join()
                .expect("thread in netns panicked")
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
