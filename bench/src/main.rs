//! `make bench`: the benchmark harness. Every timing is reported with a
//! baseline measured in the same run, because these machines are noisy.
//! Benchmarks measure; they assert nothing (that is what tests are for).

mod bed;
mod conduit;
mod containerd;
mod cri;
mod dns;
mod lazy;
mod monitor;
mod node_bed;
mod parking;
mod stats;
mod timeline;
mod xen;
mod xenstore;

fn main() -> anyhow::Result<()> {
    let quick = std::env::var_os("JITSU_BENCH_QUICK").is_some();
    // Inside the Xen test bed's dom0 (started by the `xen` section).
    if std::env::args().nth(1).as_deref() == Some("xen-dom0") {
        return xen::dom0_rows(quick);
    }
    // On a KVM node bed (started by the `arm64` and `x86-emulated` sections).
    if std::env::args().nth(1).as_deref() == Some("bed-node") {
        return node_bed::node_rows(quick);
    }
    jitsu_e2e::require_root_and_kvm();
    let machine = machine();
    println!("# jitsu bench on {machine}\n");
    // `jitsu-bench [SECTION...]` runs only those sections.
    let only: Vec<String> = std::env::args().skip(1).collect();
    let wanted = |section: &str| only.is_empty() || only.iter().any(|s| s == section);
    let mut rows = Vec::new();
    if wanted("monitor") {
        rows.extend(monitor::rows(quick)?);
    }
    let exec_first = rows
        .iter()
        .find(|r| r.name.starts_with("exec to first guest instruction"))
        .map(|r| r.samples.clone())
        .unwrap_or_else(stats::Samples::new);
    if wanted("lazy") {
        rows.extend(lazy::rows(quick, exec_first)?);
    }
    if wanted("timeline") {
        rows.extend(timeline::rows(quick)?);
    }
    if wanted("dns") {
        rows.extend(dns::rows(quick)?);
    }
    if wanted("containerd") {
        rows.extend(containerd::rows(quick)?);
    }
    if wanted("cri") {
        rows.extend(cri::rows(quick)?);
    }
    if wanted("parking") {
        rows.extend(parking::rows(quick)?);
    }
    if wanted("xenstore") {
        rows.extend(xenstore::rows(quick)?);
    }
    if wanted("conduit") {
        rows.extend(conduit::rows(quick)?);
    }
    if wanted("xen") {
        rows.extend(xen::rows(quick)?);
    }
    if wanted("arm64") {
        rows.extend(node_bed::rows(quick, jitsu_e2e::testbed::Bed::Arm64)?);
    }
    if wanted("x86-emulated") {
        rows.extend(node_bed::rows(quick, jitsu_e2e::testbed::Bed::X86)?);
    }
    stats::print_table(&rows);
    Ok(())
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split(':').nth(1))
        })
        .unwrap_or("unknown CPU")
        .trim()
        .to_string();
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    format!("{model}, {cpus} CPUs")
}
