#!/usr/bin/env bash
# Installs the Debian packages Jitsu's tests, demo and benchmarks need, if any
# is missing. Needs root (apt-get); does nothing when all are present.
set -euo pipefail

# command -> package
declare -A want=(
  [ip]=iproute2
  [curl]=curl
  [setpriv]=util-linux
  [xenstore-write]=xenstore-utils
  [dig]=dnsutils
  [containerd]=containerd
  [ctr]=containerd
  [pgrep]=procps
  [nsenter]=util-linux
  [tc]=iproute2
  [protoc]=protobuf-compiler
)
# file -> package (tools that are not on PATH)
declare -A want_file=(
  [/usr/lib/cni/bridge]=containernetworking-plugins
  [/usr/lib/cni/host-local]=containernetworking-plugins
  [/usr/sbin/runc]=runc
  [/usr/include/libxl.h]=libxen-dev
  [/bin/busybox]=busybox-static
  [/usr/bin/mmdebstrap]=mmdebstrap
  [/usr/bin/cpio]=cpio
)

missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done
for file in "${!want_file[@]}"; do
  [ -e "$file" ] || missing+=("${want_file[$file]}")
done
[ -e /dev/net/tun ] || { echo "install-deps: /dev/net/tun is missing (no TUN/TAP support)" >&2; exit 1; }

# The aarch64 cross toolchain (`make cross`): Debian's rustc, whose arm64
# std is an arm64 package (hence the foreign architecture), GNU's cross
# linker, and qemu-user to run the arm64 unit tests. rustup cannot fetch
# other targets here; the C library for aarch64 is only a recommendation of
# the cross gcc, so it is named. kmod's depmod indexes the arm64 test bed's modules.
update=
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "install-deps: adding the arm64 architecture"
  dpkg --add-architecture arm64
  update=1
fi
for pkg in rustc-web cargo-web rust-web-clippy gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static libstd-rust-web-dev:arm64 kmod; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done

if [ ${#missing[@]} -gt 0 ] || [ -n "$update" ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
fi
