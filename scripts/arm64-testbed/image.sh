#!/usr/bin/env bash
# Builds the arm64 test bed's image, or finds it in the cache, and prints its
# folder: QEMU for aarch64 (Debian 12's, unpacked privately like the Xen test
# bed's), Debian's arm64 kernel (KVM built in), Xen 4.17 for arm64, and an
# arm64 root as one cpio: containerd and runc, the CNI plugins, iproute2,
# procps, curl, dig, Xen's tools, the kernel's tun, bridge, veth, overlay,
# netfilter, Xen and netback modules, and our /init. One image serves both
# arm64 beds: `arm64` boots the kernel alone (a KVM node), `xen-arm64` boots
# Xen with the same kernel and root as its dom0.
#
# The root is only unpacked (mmdebstrap's extract variant): no arm64 code
# runs on this machine, so no binfmt handler is needed; /init does the
# little that the packages' scripts would have done.
#
# The cache key is this script, the /init and the versions of the packages
# that go in, so a change to any of them builds a new image; an absent cache
# is built from nothing. Nothing of the clone is written.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${JITSU_CACHE:-/var/cache/jitsu}/arm64

log() { echo "arm64-testbed: $*" >&2; }

for cmd in mmdebstrap cpio dpkg-deb depmod; do
  command -v "$cmd" >/dev/null || { log "installing mmdebstrap, cpio and kmod"; apt-get install -y -qq mmdebstrap cpio kmod >/dev/null; break; }
done
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  log "adding the arm64 architecture to apt"
  dpkg --add-architecture arm64
  apt-get update -qq
fi

candidate() { apt-cache policy "$1" | awk '/Candidate:/{print $2; exit}'; }
kernel_pkg=$(apt-cache depends linux-image-arm64:arm64 | awk '/Depends: linux-image-[0-9]/{sub(/:arm64$/, "", $2); print $2; exit}')
[[ -n $kernel_pkg ]] || { log "cannot find the kernel package behind linux-image-arm64 (apt-get update?)"; exit 1; }
qemu_pkgs=(qemu-system-arm qemu-system-common qemu-system-data)
qemu_libs=(libcapstone4 libfdt1 libpmem1 librdmacm1 libibverbs1 libslirp0 libvdeplug2)
# What the end-to-end tests call: containerd (with ctr) and runc, the CNI
# plugins for CRI pods, ip, pgrep, curl, dig, nsenter, setpriv and xenstore-ls;
# xen-utils for the Xen bed's dom0 (xl, libxl, xenstored, xenconsoled), and
# what its init and hotplug scripts call (grep, sed, bash, awk, logger, find).
root_pkgs=(busybox-static dash coreutils libc6 containerd runc containernetworking-plugins iproute2 procps curl
  bind9-dnsutils util-linux kmod ca-certificates xenstore-utils xen-utils-4.17 grep sed bash mawk bsdutils findutils)
key_input=$(
  cat "$0" "$here/init"
  for p in "$kernel_pkg:arm64" xen-hypervisor-4.17-arm64:arm64 "${root_pkgs[@]/%/:arm64}" "${qemu_pkgs[@]}"; do
    echo "$p $(candidate "$p")"
  done
)
key=$(sha256sum <<<"$key_input" | cut -c1-16)
image="$cache/$key"

missing_libs=()
for lib in "${qemu_libs[@]}"; do
  dpkg -s "$lib" >/dev/null 2>&1 || missing_libs+=("$lib")
done
if ((${#missing_libs[@]})); then
  log "installing QEMU's libraries: ${missing_libs[*]}"
  apt-get install -y -qq "${missing_libs[@]}" >/dev/null
fi

if [[ -f $image/done ]]; then
  echo "$image"
  exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
started=$SECONDS

log "fetching QEMU, Xen and $kernel_pkg (arm64)"
mkdir debs
(cd debs && apt-get download -qq -o APT::Sandbox::User=root "${qemu_pkgs[@]}" "$kernel_pkg:arm64" \
  xen-hypervisor-4.17-arm64:arm64 >/dev/null)
for deb in debs/qemu-*; do dpkg-deb -x "$deb" qemu; done
dpkg-deb -x debs/"$kernel_pkg"_*.deb kernel
dpkg-deb -x debs/xen-hypervisor-4.17-arm64_*.deb xenpkg
cp kernel/boot/vmlinuz-* vmlinuz
cp xenpkg/boot/xen-4.17-arm64 xen
kver=$(ls kernel/lib/modules)

log "unpacking the arm64 root (mmdebstrap)"
mmdebstrap --quiet --variant=extract --architectures=arm64 --include="$(IFS=,; echo "${root_pkgs[*]}")" \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' bookworm root >/dev/null
mods=kernel/lib/modules/$kver
mkdir -p "root/lib/modules/$kver"
cp -a "$mods"/modules.* "root/lib/modules/$kver/"
(cd kernel && find "lib/modules/$kver/kernel/net/bridge" "lib/modules/$kver/kernel/net/802" \
  "lib/modules/$kver/kernel/net/llc" "lib/modules/$kver/kernel/drivers/net/tun.ko"* \
  "lib/modules/$kver/kernel/drivers/net/veth.ko"* "lib/modules/$kver/kernel/fs/overlayfs" \
  "lib/modules/$kver/kernel/net/sched" "lib/modules/$kver/kernel/net/netfilter" \
  "lib/modules/$kver/kernel/net/ipv4/netfilter" "lib/modules/$kver/kernel/net/ipv6/netfilter" \
  "lib/modules/$kver/kernel/drivers/xen" "lib/modules/$kver/kernel/drivers/net/xen-netback" \
  -name '*.ko*' | cpio -pdm --quiet ../root)
# The machine's depmod reads any architecture's modules.
depmod -b root "$kver"
install -m 0755 "$here/init" root/init
(cd root && find . | cpio -o -H newc --quiet) >root.cpio
rm -rf root debs kernel xenpkg

echo "$key_input" >inputs
touch done
rm -rf "$image"
# Another build that got here first leaves a folder that -T will not replace.
mv -T "$work" "$image" 2>/dev/null || [[ -f $image/done ]]
trap - EXIT
log "image $key built in $((SECONDS - started)) s"
echo "$image"
