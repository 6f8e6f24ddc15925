#!/usr/bin/env bash
# Builds the Xen test bed's image, or finds it in the cache, and prints its
# folder: QEMU (Debian 12's, unpacked privately: `apt-get install
# qemu-system-x86` conflicts with this image's qemu-utils backport), Xen 4.17
# as a multiboot ELF, Debian's dom0 kernel, and a dom0 root (minbase,
# xen-utils, curl, the Xen, netback, bridge, veth, tc and KVM modules, our
# /init) as one cpio. The same kernel and root boot without Xen as the `x86`
# bed: an x86-64 KVM node under the same emulation as the arm64 bed.
#
# The cache key is this script, the dom0 /init and the versions of the
# packages that go in, so a change to any of them builds a new image; an
# absent cache is built from nothing. Nothing of the clone is written.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${JITSU_CACHE:-/var/cache/jitsu}/xen-x86_64

log() { echo "xen-testbed: $*" >&2; }

need=(mmdebstrap cpio dpkg-deb zcat)
for cmd in "${need[@]}"; do
  command -v "$cmd" >/dev/null || { log "installing mmdebstrap and cpio"; apt-get install -y -qq mmdebstrap cpio >/dev/null; break; }
done

candidate() { apt-cache policy "$1" | awk '/Candidate:/{print $2; exit}'; }
kernel_pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[[ -n $kernel_pkg ]] || { log "cannot find the kernel package behind linux-image-amd64 (apt-get update?)"; exit 1; }
qemu_pkgs=(qemu-system-x86 qemu-system-common qemu-system-data seabios ipxe-qemu)
qemu_libs=(libcapstone4 libfdt1 libpmem1 librdmacm1 libibverbs1 libslirp0 libvdeplug2)
# containerd (Debian's, with runc) for the shim's tests and `ctr run` in dom0;
# the CNI plugins for its CRI plugin's pods.
dom0_pkgs=xen-utils-4.17,kmod,procps,iproute2,busybox,curl,ca-certificates,containerd,runc,containernetworking-plugins
key_input=$(
  cat "$0" "$here/dom0-init"
  for p in xen-hypervisor-4.17-amd64 xen-utils-4.17 containerd runc containernetworking-plugins "$kernel_pkg" "${qemu_pkgs[@]}"; do
    echo "$p $(candidate "$p")"
  done
)
key=$(sha256sum <<<"$key_input" | cut -c1-16)
image="$cache/$key"

# QEMU's shared libraries are the machine's, so install them even on a hit.
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

log "fetching QEMU, Xen and $kernel_pkg"
mkdir debs
(cd debs && apt-get download -qq -o APT::Sandbox::User=root "${qemu_pkgs[@]}" xen-hypervisor-4.17-amd64 "$kernel_pkg" >/dev/null)
for deb in debs/qemu-* debs/seabios_* debs/ipxe-qemu_*; do dpkg-deb -x "$deb" qemu; done
dpkg-deb -x debs/xen-hypervisor-4.17-amd64_*.deb xenpkg
dpkg-deb -x debs/"$kernel_pkg"_*.deb kernel
zcat xenpkg/boot/xen-4.17-amd64.gz >xen    # a multiboot ELF, which QEMU's -kernel takes
cp kernel/boot/vmlinuz-* vmlinuz
kver=$(ls kernel/lib/modules)

log "building the dom0 root (mmdebstrap, about two minutes)"
mmdebstrap --quiet --variant=minbase --include="$dom0_pkgs" \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' bookworm root >/dev/null
mods=kernel/lib/modules/$kver
mkdir -p "root/lib/modules/$kver"
cp -a "$mods"/modules.* "root/lib/modules/$kver/"
(cd kernel && find "lib/modules/$kver/kernel/drivers/xen" "lib/modules/$kver/kernel/drivers/net/xen-netback" \
  "lib/modules/$kver/kernel/net/bridge" "lib/modules/$kver/kernel/net/802" "lib/modules/$kver/kernel/net/llc" \
  "lib/modules/$kver/kernel/drivers/net/tun.ko"* "lib/modules/$kver/kernel/fs/overlayfs" \
  "lib/modules/$kver/kernel/drivers/net/veth.ko"* "lib/modules/$kver/kernel/net/sched" \
  "lib/modules/$kver/kernel/arch/x86/kvm" "lib/modules/$kver/kernel/virt/lib" \
  "lib/modules/$kver/kernel/drivers/crypto/ccp" \
  -name '*.ko*' | cpio -pdm --quiet ../root)
chroot root /sbin/depmod "$kver"
install -m 0755 "$here/dom0-init" root/init
(cd root && find . | cpio -o -H newc --quiet) >dom0.cpio
rm -rf root debs kernel xenpkg

echo "$key_input" >inputs
touch done
rm -rf "$image"
mv "$work" "$image"
trap - EXIT
log "image $key built in $((SECONDS - started)) s"
echo "$image"
