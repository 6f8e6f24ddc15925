#!/usr/bin/env bash
# The example images, as `jitsu pack` builds them: `make images` writes
# them to build/images/, ready for `ctr images import`.
set -euo pipefail
cd "$(dirname "$0")/.."
JITSU=${JITSU_BIN:-target/release/jitsu}
GUESTS=${JITSU_GUESTS:-guest/target/x86_64-unknown-linux-gnu/release}
ARM64_GUESTS=guest/target/aarch64-unknown-linux-gnu/release
OUT=build/images
mkdir -p "$OUT"

# Every image carries the x86-64 and the arm64 build under one name (an OCI
# image index): containerd on each node unpacks and runs its own.
pack() {
  local guest=$1
  shift
  "$JITSU" pack --kernel "$GUESTS/$guest" --kernel "$ARM64_GUESTS/$guest" "$@"
}

# hello: the HTTP unikernel, parked until its first packet or lookup,
# parked again after 30 s idle, registered as hello.jitsu.internal.
pack hello-http --name jitsu/hello:latest \
  --dns-name hello --idle-timeout 30s -o "$OUT/hello.tar"

# hello-eager: the same unikernel, booted as soon as its task starts.
pack hello-http --name jitsu/hello-eager:latest \
  --boot eager -o "$OUT/hello-eager.tar"

# counter and hello-counter: the Conduit pair. The counter keeps a count
# for whoever asks over Conduit (its name: counter); hello-counter is
# hello-http showing each page's visit number, asked of the counter. Both
# park; a page boots hello-counter, whose question boots the counter.
pack counter --name jitsu/counter:latest \
  --conduit counter --idle-timeout 30s -o "$OUT/counter.tar"
pack hello-http --name jitsu/hello-counter:latest \
  --conduit hello-counter --dns-name hello-counter --idle-timeout 30s \
  --cmdline "hello-counter counter=counter" -o "$OUT/hello-counter.tar"

# installer: the node installer DaemonSet's image (k8s-manifests/installer.yaml),
# `jitsu`, the monitor and the shim linked statically (the image has no libc),
# for x86-64 and arm64 (`make cross` links those statically too).
STATIC=target/x86_64-unknown-linux-gnu/release
CARGO_PROFILE_RELEASE_STRIP=debuginfo RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --quiet \
  --target x86_64-unknown-linux-gnu --bin jitsu --bin jitsu-monitor --bin containerd-shim-jitsu-v1
"$JITSU" pack-installer --bin-dir "$STATIC" --bin-dir target/aarch64-unknown-linux-gnu/release \
  -o "$OUT/installer.tar"
