//! An ARM node, for real: boots the arm64 test bed (Debian's arm64 kernel
//! with KVM under QEMU's emulation, `scripts/testbed.sh arm64`) once and runs
//! there the end-to-end tests of the cross build (`make cross`) that show a
//! node works: the ABI, `jitsu run` of hello-http, the lazy path, Conduit
//! between two unikernels, `ctr run` through the shim and a CRI pod, each
//! leaving nothing behind. The tests are the same sources as this
//! machine's; the bed runs their arm64 builds against arm64 unikernels, with
//! arm64 containerd, runc and CNI plugins, and the unit tests of the monitor
//! and the shim that need a real arm64 kernel. Every test named here must
//! run there and pass.

use jitsu_e2e::testbed::{self, arm64_dir, copy_stripped, run_in_lines, Bed};

/// Test binary, and the tests of it the bed runs (empty: all of them).
/// The `unit-` ones are the unit tests qemu-user cannot run (`make test`
/// skips them there): the shim's image reads need openat2, and the
/// monitor's seccomp filter would filter the emulator.
const SUITE: &[(&str, &[&str])] = &[
    ("unit-jitsu_kvm", &[]),
    ("unit-containerd_shim_jitsu_v1", &[]),
    ("abi", &[]),
    ("bad_elf", &[]),
    (
        "hello_http",
        &[
            "curl_gets_the_page",
            "keep_alive_serves_several_requests_on_one_connection",
            "sixty_four_concurrent_clients_all_get_pages",
            "guest_threads_are_confined_by_seccomp",
        ],
    ),
    (
        "lazy",
        &[
            "a_parked_service_answers_its_first_syn_without_a_retransmission",
            "no_guest_instruction_runs_until_the_trigger",
            "a_service_parked_for_any_time_answers_its_first_syn_and_boots_once",
            "a_kept_alive_connection_to_a_reparked_vm_is_reset_at_once",
        ],
    ),
    (
        "conduit",
        &[
            "a_connection_to_a_parked_name_boots_it_and_carries_bytes_both_ways",
            "hello_http_shows_visits_counted_by_a_parked_counter",
            "many_clients_at_once_boot_the_listener_once",
        ],
    ),
    (
        "containerd",
        &["ctr_run_parks_the_first_connection_boots_and_kill_delete_clean_up"],
    ),
    (
        "cri",
        &["a_pod_sleeps_until_its_first_request_and_leaves_nothing_behind"],
    ),
];

/// The guests the suite runs, for arm64 (and x86-64: the images it packs
/// carry both, and the arm64 node must pick its own).
const GUESTS: &[&str] = &["abi-test", "hello-http", "counter", "probe"];

#[test]
fn the_arm64_suite_passes_on_an_arm64_node() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the arm64 test bed needs root (apt, QEMU)"
    );
    testbed::image(Bed::Arm64);

    let share = tempfile::tempdir().unwrap();
    let s = share.path();
    let env = testbed::node_share(Bed::Arm64, s, GUESTS);
    for (test, _) in SUITE {
        copy_stripped(
            &arm64_dir().join("e2e").join(test),
            &s.join("tests").join(test),
        );
    }
    let mut script = format!("{env} RUST_BACKTRACE=1\nfailed=0\n");
    for (test, names) in SUITE {
        let filter = if names.is_empty() {
            String::new()
        } else {
            format!("--exact {}", names.join(" "))
        };
        script.push_str(&format!(
            "echo \"== arm64: {test}\"\n\
             /jitsu/tests/{test} --test-threads 1 {filter} || failed=1\n"
        ));
    }
    script.push_str("exit $failed\n");

    let mut results: Vec<(String, usize, usize)> = Vec::new();
    let mut current = String::new();
    let status = run_in_lines(Bed::Arm64, s, &script, "", |line| {
        if let Some(test) = line.strip_prefix("== arm64: ") {
            current = test.to_string();
        } else if let Some(summary) = line.strip_prefix("test result: ") {
            let count = |what: &str| -> usize {
                summary
                    .split(';')
                    .find_map(|part| {
                        part.trim()
                            .trim_start_matches("ok. ")
                            .trim_start_matches("FAILED. ")
                            .strip_suffix(what)
                    })
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0)
            };
            results.push((current.clone(), count(" passed"), count(" failed")));
        }
    });

    for (test, names) in SUITE {
        let (_, passed, failed) = results
            .iter()
            .find(|(t, _, _)| t == test)
            .unwrap_or_else(|| panic!("{test}: no result from the arm64 bed"));
        assert_eq!(*failed, 0, "{test}: {failed} failed on arm64");
        if names.is_empty() {
            assert!(*passed > 0, "{test}: nothing ran on arm64");
        } else {
            assert_eq!(
                *passed,
                names.len(),
                "{test}: every named test runs on arm64"
            );
        }
    }
    assert!(status.success(), "the arm64 suite: {status}");
}
