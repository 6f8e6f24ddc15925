//! Xen on arm64, for real: boots the xen-arm64 test bed (Xen 4.17 for arm64
//! under QEMU's emulation, with the arm64 node's kernel and root as dom0:
//! `scripts/testbed.sh xen-arm64`) once, and runs there the arm64 build of
//! the Xen suite (`src/bin/jitsu-xen-suite/`) against the cross-built Xen
//! backend and the unikernels as arm64 Xen domains (`make cross`): console
//! and exit status, a crash reported, bad kernels refused, hello-http
//! answering, and the lazy path (a parked domain answers its first SYN,
//! after any time, to a crowd, and resets a kept-alive connection when it is
//! parked again). Every test named here must run there and pass.

use jitsu_e2e::testbed::{
    self, arm64_dir, copy, copy_stripped, run_in_lines, xen_arm64_guest, xen_arm64_monitor, Bed,
};

/// The suite's tests the bed runs: what is not about x86-64 (a stock Linux
/// bzImage), Conduit, containerd or CRI, which the x86-64 Xen bed and the
/// arm64 KVM bed show.
const TESTS: &[&str] = &[
    "console_text_reaches_stdout",
    "exit_status_of_a_halting_guest",
    "a_crashing_guest_is_reported_with_its_registers",
    "bad_images_are_refused_and_leave_no_domain",
    "hello_http_answers_curl_from_dom0",
    "a_parked_domain_answers_its_first_syn_without_a_retransmission",
    "a_domain_parked_for_any_time_answers_its_first_syn_and_boots_once",
    "a_crowd_at_a_parked_domain_boots_it_once",
    "a_kept_alive_connection_to_a_reparked_domain_is_reset_at_once",
];

#[test]
fn the_xen_suite_passes_in_an_arm64_dom0() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the test beds need root (apt, QEMU)"
    );
    testbed::image(Bed::XenArm64);

    let share = tempfile::tempdir().unwrap();
    let s = share.path();
    let arm64 = arm64_dir();
    copy_stripped(&arm64.join("jitsu"), &s.join("bin/jitsu"));
    copy_stripped(
        &arm64.join("jitsu-xen-suite"),
        &s.join("bin/jitsu-xen-suite"),
    );
    copy_stripped(&xen_arm64_monitor(), &s.join("bin/jitsu-xen-monitor"));
    for guest in ["abi-test", "hello-http"] {
        copy(&xen_arm64_guest(guest), &s.join("guests/xen").join(guest));
    }
    // A KVM build, which a Xen node must refuse.
    copy(
        &jitsu_e2e::foreign_guest("abi-test"),
        &s.join("guests/kvm/abi-test"),
    );

    // The suite takes one name filter, so it runs once per test.
    let script = format!(
        "export JITSU_BIN=/jitsu/bin/jitsu JITSU_XEN_MONITOR=/jitsu/bin/jitsu-xen-monitor \
         JITSU_XEN_GUESTS=/jitsu/guests/xen JITSU_KVM_GUESTS=/jitsu/guests/kvm; status=0; \
         for test in {}; do /jitsu/bin/jitsu-xen-suite --color never --exact \"$test\" || status=1; done; \
         exit $status",
        TESTS.join(" ")
    );
    let mut passed = Vec::new();
    let status = run_in_lines(Bed::XenArm64, s, &script, "dom0| ", |line| {
        if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|rest| rest.strip_suffix(" ... ok"))
        {
            passed.push(name.to_string());
        }
    });
    assert!(
        status.success(),
        "the Xen suite failed in the arm64 dom0 ({status}); its output is above"
    );
    for test in TESTS {
        assert!(
            passed.iter().any(|p| p == test),
            "{test} did not pass in the arm64 dom0"
        );
    }
}
