#!/usr/bin/env bash
# `make cross`: everything for aarch64 (ARM nodes), with Debian's rustc,
# whose arm64 std is a package (scripts/install-deps.sh; rustup cannot fetch
# other targets here):
#   guest/target/aarch64-unknown-linux-gnu/release/   the unikernels
#   target/aarch64-unknown-linux-gnu/release/         jitsu, the monitor, the
#       shim, the daemons and the test fixtures, linked statically
#   target/aarch64-unknown-linux-gnu/release/e2e/     test binaries by name
#       for the arm64 test bed (tests/tests/arm64.rs)
#   bench/native-http/target/aarch64-unknown-linux-gnu/release/
#       the static native server and pause program (runc pods, baselines)
# Xen's crates are left out: they link the machine's amd64 libxl.
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
export RUSTC=/usr/bin/rustc
# Line tables are enough for an emulated backtrace, and link much faster.
export CARGO_PROFILE_RELEASE_DEBUG=line-tables-only
cargo=${CARGO:-cargo}

(cd guest && $cargo build --release --target "$target")
exclude=(--exclude jitsu-xen --exclude jitsu-xen-monitor --exclude jitsu-bench)
$cargo build --release --target "$target" --workspace "${exclude[@]}" --bins --tests
(cd bench/native-http && $cargo build --release --target "$target")

# Cargo names test binaries by hash; the test bed wants them by name: the
# end-to-end tests, and the unit tests of the crates whose tests qemu-user
# cannot run (openat2, seccomp), which the bed runs for real.
tests=target/$target/release/e2e
rm -rf "$tests" && mkdir -p "$tests"
$cargo build --release --target "$target" -p jitsu-e2e -p jitsu-kvm -p containerd-shim-jitsu-v1 \
  --tests --message-format=json-render-diagnostics |
  python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["profile"]["test"] and m.get("executable"):
        name = m["target"]["name"].replace("-", "_")
        if m["target"]["kind"] != ["test"]:
            name = "unit-" + name
        shutil.copy(m["executable"], sys.argv[1] + "/" + name)
' "$tests"
ls "$tests" | grep -q . || { echo "cross-build: no test binaries found" >&2; exit 1; }
