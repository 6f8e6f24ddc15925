#!/usr/bin/env bash
# `make cross`: everything for aarch64 (ARM nodes), with Debian's rustc,
# whose arm64 std is a package (scripts/install-deps.sh; rustup cannot fetch
# other targets here):
#   guest/target/aarch64-unknown-linux-gnu/release/   the unikernels
#   target/aarch64-unknown-linux-gnu/release/         jitsu, the monitor, the
#       shim and the daemons, linked statically
#   target/aarch64-unknown-linux-gnu/release/e2e/     test binaries by name
#       for the arm64 test bed (tests/tests/arm64.rs)
#   bench/native-http/target/aarch64-unknown-linux-gnu/release/
#       the static native server and pause program (runc pods, baselines)
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
export RUSTC=/usr/bin/rustc
cargo=${CARGO:-cargo}

(cd guest && $cargo build --release --target "$target")
# Xen's crates link the machine's amd64 libxl; the end-to-end crate's own
# programs (the CRI demo, the Xen suite) and the benchmarks (`make bench`
# builds those) are not wanted on arm64 nodes.
exclude=(--exclude jitsu-xen --exclude jitsu-xen-monitor --exclude jitsu-e2e --exclude jitsu-bench)
$cargo build --release --target "$target" --workspace "${exclude[@]}" --bins
# The unit and property tests, which `make test` runs under qemu-user.
$cargo test --no-run --release --target "$target" --workspace "${exclude[@]}" --lib --bins
(cd bench/native-http && $cargo build --release --target "$target")

# Cargo names test binaries by hash; the test bed wants them by name: the
# end-to-end tests it runs (tests/tests/arm64.rs, SUITE), and the unit tests
# of the crates whose tests qemu-user cannot run (openat2, seccomp), which
# it runs for real.
e2e=(abi bad_elf hello_http lazy conduit containerd cri)
tests=target/$target/release/e2e
rm -rf "$tests" && mkdir -p "$tests"
{
  $cargo test --no-run --release --target "$target" -p jitsu-e2e "${e2e[@]/#/--test=}" \
    --message-format=json-render-diagnostics
  $cargo test --no-run --release --target "$target" -p jitsu-kvm -p containerd-shim-jitsu-v1 --lib --bins \
    --message-format=json-render-diagnostics
} | python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["profile"]["test"] and m.get("executable"):
        name = m["target"]["name"].replace("-", "_")
        if m["target"]["kind"] != ["test"]:
            name = "unit-" + name
        shutil.copy(m["executable"], sys.argv[1] + "/" + name)
' "$tests"
for name in "${e2e[@]}" unit-jitsu_kvm unit-containerd_shim_jitsu_v1; do
  [[ -x $tests/$name ]] || { echo "cross-build: no test binary $name" >&2; exit 1; }
done
