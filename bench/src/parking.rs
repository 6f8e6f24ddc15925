//! What a parked service costs, all in: the usage of a memory cgroup that
//! holds the processes (kernel memory, KVM's objects included), per
//! service, for many at once; and each process's PSS. Against the same for
//! `sleep`, the cheapest process there is.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use jitsu_e2e::containerd::Containerd;
use jitsu_e2e::fleet::Fleet;
use jitsu_e2e::lazy::LazyHello;
use jitsu_e2e::process::Guarded;
use std::net::SocketAddr;

use crate::stats::{Row, Samples, Unit};

pub fn rows(quick: bool) -> Result<Vec<Row>> {
    let (monitors, tasks) = if quick { (20, 10) } else { (200, 100) };
    let sleeps = sleeping(monitors)?;
    let mut rows = one_monitor(&sleeps)?;
    rows.extend(parked_monitors(monitors, &sleeps)?);
    rows.push(parked_tasks(tasks, &sleeps)?);
    if !quick {
        // The aim: a thousand parked tasks in 1 GiB.
        rows.push(parked_tasks(1000, &sleeps)?);
    }
    Ok(rows)
}

/// One monitor's RSS and PSS, parked and then serving (after a request).
fn one_monitor(sleeps: &Baseline) -> Result<Vec<Row>> {
    let server = LazyHello::start(&[]);
    let pid = server.monitor.pid();
    let parked = (rss_of(pid)?, pss_of(std::iter::once(pid)));
    let addr = SocketAddr::from((server.ns.guest_ip, 80));
    server.ns.run_in(|| crate::lazy::first_byte(addr))?;
    let serving = (rss_of(pid)?, pss_of(std::iter::once(pid)));
    let row = |name: &str, samples: Samples, baseline_name: &str, baseline: &Samples| Row {
        name: name.into(),
        samples,
        baseline_name: baseline_name.into(),
        baseline: baseline.clone(),
        unit: Unit::Memory,
    };
    Ok(vec![
        row("monitor RSS, parked", parked.0, "RSS of sleep", &sleeps.rss),
        row(
            "monitor PSS, parked",
            parked.1,
            "PSS of sleep",
            &sleeps.pss_alone,
        ),
        row(
            "monitor RSS, serving",
            serving.0,
            "RSS of sleep",
            &sleeps.rss,
        ),
        row(
            "monitor PSS, serving",
            serving.1,
            "PSS of sleep",
            &sleeps.pss_alone,
        ),
    ])
}

fn rss_of(pid: u32) -> Result<Samples> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")?;
    let mut samples = Samples::new();
    samples.push_value(kib);
    Ok(samples)
}

/// A sleeping process: alone (RSS, PSS), and `n` at once (cgroup usage and
/// PSS per process).
struct Baseline {
    rss: Samples,
    pss_alone: Samples,
    per_process: Samples,
    pss: Samples,
}

fn sleeping(n: usize) -> Result<Baseline> {
    let alone = Guarded::spawn(Command::new("sleep").arg("1000").stdout(Stdio::null()));
    std::thread::sleep(Duration::from_millis(100));
    let (rss, pss_alone) = (rss_of(alone.pid())?, pss_of(std::iter::once(alone.pid())));
    drop(alone);
    let cgroup = MemoryCgroup::create("sleep")?;
    let before = cgroup.usage()?;
    let sleepers: Vec<Guarded> = (0..n)
        .map(|_| {
            let mut cmd = Command::new("sleep");
            cmd.arg("1000").stdout(Stdio::null());
            cgroup.enter_on_exec(&mut cmd);
            Guarded::spawn(&mut cmd)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let per_process = per_member(&cgroup, before, n)?;
    let pss = pss_of(sleepers.iter().map(Guarded::pid));
    drop(sleepers);
    Ok(Baseline {
        rss,
        pss_alone,
        per_process,
        pss,
    })
}

/// `n` parked `jitsu-monitor --lazy` of hello-http on one bridge.
fn parked_monitors(n: usize, sleeps: &Baseline) -> Result<Vec<Row>> {
    let cgroup = MemoryCgroup::create("monitors")?;
    let before = cgroup.usage()?;
    let fleet = Fleet::start_in(n, &[], |cmd| cgroup.enter_on_exec(cmd));
    let per_service = per_member(&cgroup, before, n)?;
    let pss = pss_of(fleet.services.iter().map(|s| s.monitor.pid()));
    drop(fleet);
    Ok(vec![
        Row {
            name: format!("parked monitor, all in (cgroup, N = {n})"),
            samples: per_service,
            baseline_name: "a sleep process (same)".into(),
            baseline: sleeps.per_process.clone(),
            unit: Unit::Memory,
        },
        Row {
            name: format!("parked monitor, PSS (N = {n})"),
            samples: pss,
            baseline_name: "PSS of sleep (N at once)".into(),
            baseline: sleeps.pss.clone(),
            unit: Unit::Memory,
        },
    ])
}

/// `n` parked `ctr run` tasks, each with whatever shim and monitor it needs:
/// containerd runs in the cgroup, so its shims and their monitors do too.
fn parked_tasks(n: usize, sleeps: &Baseline) -> Result<Row> {
    let cgroup = MemoryCgroup::create("tasks")?;
    let containerd = Containerd::start_with_pre_exec(|cmd| cgroup.enter_on_exec(cmd));
    containerd.import_hello("jitsu/hello:latest", &[]);
    // Each monitor runs in its task's cgroup: put those below ours, so
    // that our usage counts them.
    let others = TaskCgroups::new(&cgroup);
    let run = |id: &str| {
        let path = format!("{}/{id}", cgroup.relative());
        containerd.run_jitsu_ok("docker.io/jitsu/hello:latest", id, &["--cgroup", &path]);
    };
    // One task first, so that what every task shares (containerd's own
    // caches, the binaries' pages) is in the baseline, not in the figure.
    run("warm");
    std::thread::sleep(Duration::from_millis(300));
    let before = cgroup.usage()?;
    for i in 0..n {
        run(&format!("t{i}"));
    }
    std::thread::sleep(Duration::from_millis(300));
    let per_task = per_member(&cgroup, before, n)?;
    drop(containerd);
    drop(others);
    let total_mib = per_task.median() * n as f64 / 1024.0;
    Ok(Row {
        name: format!("parked ctr task, all in (N = {n}: {total_mib:.0} MiB)"),
        samples: per_task,
        baseline_name: "a sleep process (same)".into(),
        baseline: sleeps.per_process.clone(),
        unit: Unit::Memory,
    })
}

/// The cgroup's growth since `before`, per member, in KiB.
fn per_member(cgroup: &MemoryCgroup, before: u64, n: usize) -> Result<Samples> {
    let after = cgroup.usage()?;
    let mut samples = Samples::new();
    samples.push_value(after.saturating_sub(before) as f64 / n as f64 / 1024.0);
    Ok(samples)
}

fn pss_of(pids: impl Iterator<Item = u32>) -> Samples {
    let mut samples = Samples::new();
    for pid in pids {
        let rollup =
            std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        if let Some(kib) = rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        {
            samples.push_value(kib);
        }
    }
    samples
}

/// The folders the shim makes for tasks' cgroups in the other v1
/// hierarchies (cpuacct, pids) along our memory cgroup's path: removed
/// when dropped, those that did not exist before only.
struct TaskCgroups {
    made: Vec<PathBuf>,
}

impl TaskCgroups {
    fn new(cgroup: &MemoryCgroup) -> TaskCgroups {
        let mut made = Vec::new();
        for controller in ["cpuacct", "pids"] {
            let mut dir = Path::new("/sys/fs/cgroup").join(controller);
            if !dir.is_dir() {
                continue;
            }
            for part in Path::new(cgroup.relative().trim_start_matches('/')).components() {
                dir.push(part);
                if !dir.exists() {
                    made.push(dir.clone());
                }
            }
        }
        TaskCgroups { made }
    }
}

impl Drop for TaskCgroups {
    /// The shim removes its tasks' cgroups as it cleans up after them, a
    /// moment after containerd is gone: wait for that (at most 5 s).
    fn drop(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for dir in self.made.iter().rev() {
            while std::fs::remove_dir(dir).is_err()
                && dir.exists()
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// A memory cgroup of ours below the one this process is in (cgroup v1's
/// memory hierarchy, or the unified one), removed when dropped.
pub struct MemoryCgroup {
    path: PathBuf,
    usage: &'static str,
}

impl MemoryCgroup {
    pub fn create(name: &str) -> Result<MemoryCgroup> {
        let own = std::fs::read_to_string("/proc/self/cgroup").context("/proc/self/cgroup")?;
        let v1 = own
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()));
        let (base, usage) = match v1 {
            Some(path) => (
                Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/')),
                "memory.usage_in_bytes",
            ),
            None => {
                let path = own
                    .lines()
                    .find_map(|l| l.strip_prefix("0::"))
                    .context("no cgroup")?;
                (
                    Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/')),
                    "memory.current",
                )
            }
        };
        let path = base.join(format!("jitsu-bench-{name}-{}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        let cgroup = MemoryCgroup { path, usage };
        if !cgroup.path.join(usage).exists() {
            bail!("{} has no memory accounting", cgroup.path.display());
        }
        Ok(cgroup)
    }

    /// Its path below the hierarchy's root, as `linux.cgroupsPath` names it.
    pub fn relative(&self) -> String {
        let root = match self.usage {
            "memory.usage_in_bytes" => "/sys/fs/cgroup/memory",
            _ => "/sys/fs/cgroup",
        };
        let below = self.path.strip_prefix(root).unwrap_or(&self.path);
        format!("/{}", below.display())
    }

    pub fn usage(&self) -> Result<u64> {
        let file = self.path.join(self.usage);
        let text = std::fs::read_to_string(&file).with_context(|| format!("{}", file.display()))?;
        Ok(text.trim().parse()?)
    }

    /// The child moves itself into this cgroup before it execs.
    pub fn enter_on_exec(&self, cmd: &mut Command) {
        use std::os::unix::ffi::OsStrExt;
        let procs = std::ffi::CString::new(self.path.join("cgroup.procs").as_os_str().as_bytes())
            .expect("a cgroup path has no NUL");
        // SAFETY: the closure runs in the child between fork and exec; it
        // allocates nothing and calls only open, write and close, which
        // are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Empty once the processes it held are gone.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
