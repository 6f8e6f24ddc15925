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
#   guest/target/xen/aarch64-unknown-linux-gnu/release/image/
#       the unikernels as arm64 Xen domains (Images, which libxl boots)
#   target/xen-arm64/aarch64-unknown-linux-gnu/release/jitsu-xen-monitor
#       the Xen backend's monitor, linked against libxl (dynamically: the
#       arm64 dom0 has Xen's libraries), and the Xen suite beside it
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

# Xen on arm64. The guests as domains: the same sources with the SDK's
# xen-pvh platform, flattened from ELF to the Image libxl loads.
xen_guests=(hello-http abi-test counter probe)
(cd guest && $cargo build --release --target "$target" --target-dir target/xen \
  "${xen_guests[@]/#/-p=}" --features hello-http/xen,abi-test/xen,counter/xen,probe/xen)
images=guest/target/xen/$target/release/image
mkdir -p "$images"
for guest in "${xen_guests[@]}"; do
  aarch64-linux-gnu-objcopy -O binary "guest/target/xen/$target/release/$guest" "$images/$guest"
done
# The Xen backend links libxl. libxen-dev:arm64 cannot be installed beside
# the machine's amd64 one, so its files and the libraries it names are
# unpacked into a sysroot of their own, cached by version.
xen_libs=(libxen-dev libxenmisc4.17 libxencall1 libxendevicemodel1 libxenevtchn1 libxenforeignmemory1
  libxengnttab1 libxenstore4 libxentoolcore1 libxentoollog1 libxenhypfs1)
version=$(apt-cache policy libxen-dev:arm64 | awk '/Candidate:/{print $2; exit}')
[[ -n $version && $version != "(none)" ]] || { echo "cross-build: no libxen-dev:arm64 (dpkg --add-architecture arm64; apt-get update)" >&2; exit 1; }
sysroot=${JITSU_CACHE:-/var/cache/jitsu}/arm64-xen-sysroot/$version
if [[ ! -f $sysroot/done ]]; then
  work=$(mktemp -d)
  (cd "$work" && apt-get download -qq -o APT::Sandbox::User=root "${xen_libs[@]/%/:arm64}" >/dev/null)
  rm -rf "$sysroot" && mkdir -p "$sysroot"
  for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$sysroot"; done
  rm -rf "$work"
  touch "$sysroot/done"
fi
libdir=$sysroot/usr/lib/aarch64-linux-gnu
# Dynamic, unlike the rest (RUSTFLAGS replaces the config's +crt-static);
# libxl's own dependencies (yajl, uuid, zlib) are the dom0's, so they are
# left unresolved here.
PKG_CONFIG_ALLOW_CROSS=1 PKG_CONFIG_SYSROOT_DIR=$sysroot PKG_CONFIG_LIBDIR=$libdir/pkgconfig \
  RUSTFLAGS="-C target-feature=-crt-static -C link-arg=-Wl,-rpath-link,$libdir -C link-arg=-Wl,--allow-shlib-undefined" \
  $cargo build --release --target "$target" --target-dir target/xen-arm64 -p jitsu-xen-monitor
$cargo build --release --target "$target" -p jitsu-e2e --bin jitsu-xen-suite
