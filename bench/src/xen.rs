//! Xen rows, measured in the Xen test bed's dom0 (Xen under QEMU's
//! emulation: only the ratios mean anything). On the host, `rows` boots the
//! test bed and runs `jitsu-bench xen-dom0` there; that prints one line per
//! row with its raw samples, which become rows of the host's table.
//!
//! - create → first console line: `jitsu run --hypervisor xen abi-test`
//!   against `xl create -p`, `xl console`, `xl unpause` of the same guest;
//! - create → first HTTP byte: hello-http through our backend against `xl
//!   create -p` + the same XenStore keys + `xl unpause`;
//! - a parked hello-http (`--lazy`, parked at its entry, and at its ready
//!   point): a cold connection's first HTTP byte, against a request to it
//!   once it runs;
//! - `ctr run` of the hello image → first HTTP byte (containerd in dom0,
//!   our shim), against `ctr run` of busybox httpd under runc.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use jitsu_e2e::testbed::{copy, copy_stripped, release_bin, run_in_dom0, xen_guest};

use crate::bed::{self, print_row};
use crate::stats::Row;

const EMULATED: &str = " (emulated)";

/// Host side: the rows, measured in a dom0 of the test bed.
pub fn rows(quick: bool) -> Result<Vec<Row>> {
    let share = tempfile::tempdir()?;
    let s = share.path();
    copy_stripped(&std::env::current_exe()?, &s.join("bin/jitsu-bench"));
    for bin in ["jitsu", "jitsu-xen-monitor", "containerd-shim-jitsu-v1"] {
        copy_stripped(&release_bin(bin), &s.join("bin").join(bin));
    }
    // runc's side of `ctr run`: a static busybox (busybox-static).
    copy(Path::new("/bin/busybox"), &s.join("bin/busybox"));
    for guest in ["abi-test", "hello-http"] {
        copy(&xen_guest(guest), &s.join("guests").join(guest));
    }
    let script = format!(
        "JITSU_XEN_MONITOR=/jitsu/bin/jitsu-xen-monitor {} /jitsu/bin/jitsu-bench xen-dom0",
        if quick { "JITSU_BENCH_QUICK=1" } else { "" }
    );
    let out = run_in_dom0(s, &script).stderr(Stdio::inherit()).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("the Xen bench failed in dom0 ({}):\n{text}", out.status);
    }
    bed::read_rows(&text, EMULATED)
}

/// Inside dom0: measures and prints the rows.
pub fn dom0_rows(quick: bool) -> Result<()> {
    let n = if quick { 3 } else { 10 };
    let guests = PathBuf::from("/jitsu/guests");
    let jitsu = PathBuf::from("/jitsu/bin/jitsu");
    let bridge = "jxbench0";
    let mut ours_console = Vec::new();
    let mut xl_console = Vec::new();
    let mut ours_http = Vec::new();
    let mut xl_http = Vec::new();
    for i in 0..n {
        ours_console.push(ours_to_console(&jitsu, &guests.join("abi-test"), i)?);
        xl_console.push(xl_to_console(&guests.join("abi-test"), i)?);
        ours_http.push(ours_to_http(&jitsu, &guests.join("hello-http"), bridge, i)?);
        xl_http.push(xl_to_http(&guests.join("hello-http"), bridge, i)?);
    }
    print_row(
        "Xen: create → first console line",
        &ours_console,
        "xl create -p + console + unpause",
        &xl_console,
    );
    print_row(
        "Xen: create → first HTTP byte",
        &ours_http,
        "xl create -p + keys + unpause",
        &xl_http,
    );
    let hello = guests.join("hello-http");
    for park_at in ["entry", "ready"] {
        let (cold, running) = parked_connect(&jitsu, &hello, bridge, n, park_at)?;
        print_row(
            &format!("Xen: parked ({park_at}), cold connect → first HTTP byte"),
            &cold,
            "a request while it runs",
            &running,
        );
    }
    let (xen, runc) = ctr_run_rows(&jitsu, &hello, n)?;
    print_row(
        "Xen: ctr run → first HTTP byte",
        &xen,
        "runc: ctr run → first byte (busybox httpd)",
        &runc,
    );
    let _ = Command::new("ip").args(["link", "del", bridge]).status();
    Ok(())
}

/// Spawn to the first line containing `needle` on stdout, then waits for the end.
fn time_to_line(mut cmd: Command, needle: &str) -> Result<f64> {
    let start = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let seen = lines
        .by_ref()
        .map_while(|l| l.ok())
        .any(|l| l.contains(needle));
    let elapsed = start.elapsed().as_secs_f64();
    for _ in lines {}
    child.wait()?;
    if !seen {
        bail!("{cmd:?} never printed {needle:?}");
    }
    Ok(elapsed)
}

fn ours_to_console(jitsu: &Path, guest: &Path, i: usize) -> Result<f64> {
    let mut cmd = Command::new(jitsu);
    cmd.args([
        "run",
        "--hypervisor",
        "xen",
        "--mem",
        "32M",
        "--domain-name",
        &format!("jb-ours-{i}"),
    ])
    .arg(guest)
    .args(["--", "hello"]);
    time_to_line(cmd, "hello from abi-test")
}

/// `xl` as a user drives it: build paused, attach the console, unpause
/// (attaching after the start would miss a short guest's output).
fn xl_to_console(guest: &Path, i: usize) -> Result<f64> {
    let name = format!("jb-xl-{i}");
    let cfg = std::env::temp_dir().join(format!("{name}.cfg"));
    std::fs::write(
        &cfg,
        format!(
            "type=\"pvh\"\nname=\"{name}\"\nkernel=\"{}\"\nmemory=32\ncmdline=\"hello\"\non_poweroff=\"preserve\"\n",
            guest.display()
        ),
    )?;
    let start = Instant::now();
    if !Command::new("xl")
        .arg("create")
        .arg("-p")
        .arg(&cfg)
        .stdout(Stdio::null())
        .status()?
        .success()
    {
        bail!("xl create -p {}", cfg.display());
    }
    let mut console = Command::new("xl")
        .args(["console", &name])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    Command::new("xl").args(["unpause", &name]).status()?;
    let lines = BufReader::new(console.stdout.take().unwrap()).lines();
    let seen = lines
        .map_while(|l| l.ok())
        .any(|l| l.contains("hello from abi-test"));
    let elapsed = start.elapsed().as_secs_f64();
    Command::new("xl").args(["destroy", &name]).status()?;
    console.wait()?;
    if !seen {
        bail!("xl console {name} never showed the guest's line");
    }
    Ok(elapsed)
}

/// Connects and GETs `/` until a first byte comes back; returns when it did.
fn first_http_byte(addr: SocketAddr, deadline: Instant) -> Result<Instant> {
    loop {
        if Instant::now() > deadline {
            bail!("{addr} never answered");
        }
        let attempt = Instant::now();
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            // Refused or unreachable at once (no ARP answer yet): the only
            // way to see the guest's first answer is to ask again; not in a
            // hot loop, which would take the emulated CPUs from the guest.
            if attempt.elapsed() < Duration::from_millis(10) {
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        };
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        if stream
            .write_all(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            continue;
        }
        let mut byte = [0u8; 1];
        if let Ok(1) = stream.read(&mut byte) {
            return Ok(Instant::now());
        }
    }
}

fn guest_addr(i: usize) -> (String, SocketAddr) {
    let ip = format!("10.93.0.{}", 10 + i);
    let addr = format!("{ip}:80").parse().unwrap();
    (ip, addr)
}

fn ours_to_http(jitsu: &Path, guest: &Path, bridge: &str, i: usize) -> Result<f64> {
    let (ip, addr) = guest_addr(i);
    let start = Instant::now();
    let mut child = Command::new(jitsu)
        .args([
            "run",
            "--hypervisor",
            "xen",
            "--mem",
            "32M",
            "--domain-name",
            &format!("jb-http-{i}"),
            "--net",
            bridge,
        ])
        .args(["--ip", &format!("{ip}/24"), "--gw", "10.93.0.1"])
        .arg(guest)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let answered = first_http_byte(addr, start + Duration::from_secs(120));
    terminate(&mut child)?;
    Ok((answered? - start).as_secs_f64())
}

fn terminate(child: &mut std::process::Child) -> Result<()> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    child.wait()?;
    Ok(())
}

fn xl_to_http(guest: &Path, bridge: &str, i: usize) -> Result<f64> {
    let (ip, addr) = guest_addr(i + 100);
    let name = format!("jb-xlhttp-{i}");
    let cfg = std::env::temp_dir().join(format!("{name}.cfg"));
    let mac = format!("02:4a:0a:5d:00:{:02x}", 110 + i);
    std::fs::write(
        &cfg,
        format!(
            "type=\"pvh\"\nname=\"{name}\"\nkernel=\"{}\"\nmemory=32\nvif=[\"bridge={bridge},mac={mac}\"]\n",
            guest.display()
        ),
    )?;
    let start = Instant::now();
    let ok = Command::new("xl")
        .arg("create")
        .arg("-p")
        .arg(&cfg)
        .stdout(Stdio::null())
        .status()?
        .success();
    if !ok {
        bail!("xl create -p {}", cfg.display());
    }
    let domid = String::from_utf8(Command::new("xl").args(["domid", &name]).output()?.stdout)?;
    let home = format!("/local/domain/{}/jitsu", domid.trim());
    for (key, value) in [
        ("ipv4", format!("{ip}/24")),
        ("gateway", "10.93.0.1".into()),
    ] {
        Command::new("xenstore-write")
            .arg(format!("{home}/{key}"))
            .arg(value)
            .status()?;
    }
    Command::new("xl").args(["unpause", &name]).status()?;
    let answered = first_http_byte(addr, start + Duration::from_secs(120));
    Command::new("xl").args(["destroy", &name]).status()?;
    Ok((answered? - start).as_secs_f64())
}

/// A lazy hello-http (`jitsu run --lazy`, parked at `park_at`): a request
/// on a fresh connection to the parked domain (cold: the SYN boots it),
/// then one to the domain running; `stop` parks a fresh domain for the next.
fn parked_connect(
    jitsu: &Path,
    guest: &Path,
    bridge: &str,
    n: usize,
    park_at: &str,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let dir = tempfile::tempdir()?;
    let control = dir.path().join("control.sock");
    let (ip, addr) = guest_addr(240);
    let mut child = Command::new(jitsu)
        .args(["run", "--hypervisor", "xen", "--lazy", "--park-at", park_at])
        .args([
            "--domain-name",
            &format!("jb-lazy-{park_at}"),
            "--net",
            bridge,
        ])
        .args([
            "--ip",
            &format!("{ip}/24"),
            "--gw",
            "10.93.0.1",
            "--control",
        ])
        .arg(&control)
        .arg(guest)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let result = (|| {
        let mut cold = Vec::new();
        let mut running = Vec::new();
        for _ in 0..n {
            await_state(&control, "parked")?;
            let start = Instant::now();
            cold.push(
                (first_http_byte(addr, start + Duration::from_secs(60))? - start).as_secs_f64(),
            );
            let start = Instant::now();
            running.push(
                (first_http_byte(addr, start + Duration::from_secs(30))? - start).as_secs_f64(),
            );
            jitsu_e2e::lazy::try_request(&control, "stop")?;
        }
        Ok((cold, running))
    })();
    terminate(&mut child)?;
    result
}

/// Polls a lazy monitor's status until its state is `state`.
fn await_state(control: &Path, state: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let want = format!("\"state\":\"{state}\"");
    while Instant::now() < deadline {
        if jitsu_e2e::lazy::try_request(control, "status").is_ok_and(|s| s.contains(&want)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("the lazy monitor never reached {state}")
}

/// containerd (Debian's, in dom0) with our shim, and runc beside it:
/// `ctr run` of the hello image to its first HTTP byte (parked, then booted
/// by the request), against `ctr run` of busybox httpd under runc.
fn ctr_run_rows(jitsu: &Path, guest: &Path, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let socket = d.join("containerd.sock");
    let state = d.join("jitsu");
    let path = format!("/jitsu/bin:{}", std::env::var("PATH").unwrap_or_default());
    let mut containerd = Command::new("containerd")
        .arg("--root")
        .arg(d.join("root"))
        .arg("--state")
        .arg(d.join("state"))
        .arg("--address")
        .arg(&socket)
        .env("PATH", &path)
        .env("JITSU_STATE_DIR", &state)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("containerd.log"))?)
        .spawn()?;
    let ctr = |args: &[&str]| -> Result<()> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&socket)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    // runc's --net-host bind-mounts the host's /etc/hosts; the test bed's
    // dom0 (this benchmark's own machine) has none.
    if !Path::new("/etc/hosts").exists() {
        std::fs::write("/etc/hosts", "127.0.0.1 localhost\n")?;
    }
    let result = (|| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while ctr(&["version"]).is_err() {
            if Instant::now() > deadline {
                bail!("containerd did not come up");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let hello = d.join("hello.tar");
        let packed = Command::new(jitsu)
            .args(["pack", "--name", "localhost/jb/hello:1", "--xen-kernel"])
            .arg(guest)
            .arg("-o")
            .arg(&hello)
            .status()?;
        anyhow::ensure!(packed.success(), "jitsu pack");
        ctr(&["images", "import", hello.to_str().unwrap()])?;
        let busybox = std::fs::read("/jitsu/bin/busybox")?;
        let files = [jitsu_spec::archive::File {
            path: "bin/busybox",
            mode: 0o755,
            data: &busybox,
        }];
        let archive = jitsu_spec::archive::image_archive(
            &files,
            Default::default(),
            "/bin/busybox",
            "localhost/jb/busybox:1",
        )
        .map_err(|e| anyhow::anyhow!("the busybox image: {e}"))?;
        std::fs::write(d.join("busybox.tar"), archive)?;
        ctr(&["images", "import", d.join("busybox.tar").to_str().unwrap()])?;
        let remove = |id: &str| -> Result<()> {
            ctr(&["task", "kill", "-s", "SIGKILL", id])?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while ctr(&["task", "delete", id]).is_err() {
                if Instant::now() > deadline {
                    bail!("task {id} did not stop");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            ctr(&["container", "delete", id])
        };
        let mut xen = Vec::new();
        let mut runc = Vec::new();
        for i in 0..n {
            let id = format!("jb-x-{i}");
            let start = Instant::now();
            ctr(&[
                "run",
                "-d",
                "--runtime",
                "io.containerd.jitsu.v1",
                "localhost/jb/hello:1",
                &id,
            ])?;
            // The one lease the shim holds names the domain's address.
            let lease = std::fs::read_dir(state.join("ipam"))?
                .flatten()
                .find_map(|e| e.file_name().to_str()?.parse::<std::net::Ipv4Addr>().ok());
            let Some(ip) = lease else {
                bail!("no address lease for {id}")
            };
            let answered =
                first_http_byte(SocketAddr::from((ip, 80)), start + Duration::from_secs(120))?;
            xen.push((answered - start).as_secs_f64());
            remove(&id)?;
            let id = format!("jb-r-{i}");
            let start = Instant::now();
            ctr(&[
                "run",
                "-d",
                "--net-host",
                // dom0's root is its initramfs, which pivot_root cannot leave.
                "--no-pivot",
                "localhost/jb/busybox:1",
                &id,
                "/bin/busybox",
                "httpd",
                "-f",
                "-p",
                "127.0.0.1:8089",
                "-h",
                "/",
            ])?;
            let answered =
                first_http_byte("127.0.0.1:8089".parse()?, start + Duration::from_secs(120))?;
            runc.push((answered - start).as_secs_f64());
            remove(&id)?;
        }
        Ok((xen, runc))
    })();
    terminate(&mut containerd)?;
    result
}
