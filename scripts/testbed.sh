#!/usr/bin/env bash
# The test beds, machines under QEMU's software emulation for what these
# machines' KVM cannot run:
#   xen    Xen 4.17 with a Debian dom0 on x86-64 (KVM here cannot run a
#          hypervisor; see xen-testbed/image.sh for what the image holds)
#   arm64  a Debian arm64 node with /dev/kvm (EL2 emulated, so the kernel's
#          KVM runs arm64 guests nested; see arm64-testbed/image.sh)
#   xen-arm64  Xen 4.17 for arm64 with the arm64 bed's kernel and root as
#          its dom0 (the same image)
#   x86    the xen bed's kernel and root without Xen: an x86-64 node whose
#          KVM runs our guests nested under the same emulation as arm64's
#          (the baseline of the arm64 bed's benchmark rows)
#
#   testbed.sh BED run [--share DIR] [--] COMMAND [ARG...]
#       boots, runs COMMAND there (cwd /jitsu, DIR's contents copied there),
#       prints its output and exits with its status (125: it never finished)
#   testbed.sh BED shell [--share DIR]
#       an interactive shell there on this terminal (`busybox poweroff -f`)
#
# DIR rides as a second cpio appended to the initramfs, which the kernel
# unpacks on top of the first: no disk image, no 9p. Each run has its own
# temporary folder and QEMU, ended by pid whatever happens. Images are built
# once and cached (JITSU_CACHE, default /var/cache/jitsu), keyed by what
# goes into them.
#
# Environment: JITSU_TESTBED_TIMEOUT (seconds, default 1500),
# JITSU_TESTBED_CONSOLE (keep the whole console log in this file),
# JITSU_TESTBED_MEM (MiB for the machine, default 3072).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

usage() { sed -n '14,19p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
(($# >= 2)) || usage
bed=$1 mode=$2; shift 2
case $bed in xen | arm64 | xen-arm64 | x86) ;; *) usage ;; esac
share=
while (($#)); do
  case $1 in
    --share) share=$(realpath "$2"); shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
case $mode in
  run) (($#)) || usage ;;
  shell) ;;
  *) usage ;;
esac

case $bed in
  xen | x86) image=$("$here/xen-testbed/image.sh") ;;
  *) image=$("$here/arm64-testbed/image.sh") ;;
esac
stage=$(mktemp -d "/tmp/jitsu-$bed.XXXXXX")
qemu_pid=
cleanup() {
  [[ -n $qemu_pid ]] && kill "$qemu_pid" 2>/dev/null || true
  [[ -n $qemu_pid ]] && wait "$qemu_pid" 2>/dev/null || true
  rm -rf "$stage"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$stage/payload/jitsu"
[[ -n $share ]] && cp -a "$share/." "$stage/payload/jitsu/"
if [[ $mode == run ]]; then
  # Quoted for the bed's sh (dash: no $'...'), each argument in single quotes.
  {
    echo '#!/bin/sh'
    for arg in "$@"; do printf "'%s' " "${arg//\'/\'\\\'\'}"; done
    echo
  } >"$stage/payload/jitsu/run"
else
  printf '#!/bin/sh\necho "%s shell: busybox poweroff -f to leave"\nsetsid cttyhack sh -l\n' "$bed" >"$stage/payload/jitsu/run"
fi
(cd "$stage/payload" && find jitsu | cpio -o -H newc --quiet) >"$stage/payload.cpio"

mem=${JITSU_TESTBED_MEM:-3072}
# The x86-64 machine of the xen and x86 beds (see xen below for its CPU).
x86_machine=(
  "$image/qemu/usr/bin/qemu-system-x86_64" -L "$image/qemu/usr/share/qemu" -L "$image/qemu/usr/share/seabios"
  -machine q35 -cpu qemu64,+svm,+npt -m "$mem" -smp 2
  -display none -vga none -nic none -no-reboot
)
case $bed in
xen)
  root_cpio=dom0.cpio
  # qemu64,+svm,+npt is the CPU that works: `max` breaks the PV dom0 (SMAP)
  # and PVH guests (RDTSCP), and without NPT Xen has no HAP (Debian's Xen
  # has no shadow paging, so no PVH domain could be built). -initrd lists
  # multiboot modules separated by commas (a comma inside one would be
  # written twice).
  qemu=(
    "${x86_machine[@]}" -kernel "$image/xen" -append "console=com1 com1=115200,8n1 dom0_mem=1536M,max:1536M"
    -initrd "$image/vmlinuz console=hvc0 earlyprintk=xen loglevel=3,$stage/initrd"
  ) ;;
x86)
  root_cpio=dom0.cpio
  # QEMU emulates SVM with nested paging, so the kernel's kvm_amd comes up
  # and runs our guests nested, as the arm64 bed's KVM does under EL2.
  qemu=(
    "${x86_machine[@]}" -kernel "$image/vmlinuz" -initrd "$stage/initrd"
    -append "console=ttyS0 loglevel=3 jitsu.bed=x86"
  ) ;;
arm64)
  root_cpio=root.cpio
  # virtualization=on emulates EL2, so the kernel brings KVM up in VHE mode
  # (-cpu max has FEAT_VHE); its guests' virtual GIC needs GICv3.
  qemu=(
    "$image/qemu/usr/bin/qemu-system-aarch64" -L "$image/qemu/usr/share/qemu"
    -machine virt,virtualization=on,gic-version=3 -cpu max -m "$mem" -smp 2
    -display none -nic none -no-reboot
    -kernel "$image/vmlinuz" -initrd "$stage/initrd"
    -append "console=ttyAMA0 loglevel=3 rdinit=/init"
  ) ;;
xen-arm64)
  root_cpio=root.cpio
  # QEMU's guest-loader puts dom0's kernel and root in the device tree as Xen
  # boot modules. They sit at or above 0x49000000: the device tree is at
  # 0x48000000, and a module over it makes Xen fail in its page allocator.
  # cortex-a57 is the CPU this Xen was seen to boot a dom0 and domUs on.
  qemu=(
    "$image/qemu/usr/bin/qemu-system-aarch64" -L "$image/qemu/usr/share/qemu"
    -machine virt,virtualization=on,gic-version=3 -cpu cortex-a57 -m "$mem" -smp 2
    -display none -nic none -no-reboot
    -kernel "$image/xen" -append "dom0_mem=$((mem / 2))M,max:$((mem / 2))M console=dtuart"
    -device guest-loader,addr=0x42000000,kernel="$image/vmlinuz",bootargs="console=hvc0 loglevel=3 rdinit=/init"
    -device guest-loader,addr=0x49000000,initrd="$stage/initrd"
  ) ;;
esac
cat "$image/$root_cpio" "$stage/payload.cpio" >"$stage/initrd"
rm -rf "$stage/payload" "$stage/payload.cpio"

if [[ $mode == shell ]]; then
  "${qemu[@]}" -chardev stdio,id=console,signal=off -serial chardev:console
  exit 0
fi

console=${JITSU_TESTBED_CONSOLE:-$stage/console}
: >"$console"
# The command's lines (between the markers) go to stdout as they come; a
# machine that cannot start (its root does not fit, its kernel panics) ends the
# run at once rather than at the timeout.
timeout "${JITSU_TESTBED_TIMEOUT:-1500}" "${qemu[@]}" -chardev file,id=console,path="$console" \
  -serial chardev:console </dev/null &
qemu_pid=$!
(
  go=
  tail -n +1 -F --pid="$qemu_pid" "$console" 2>/dev/null | tr -d '\r' | while IFS= read -r line; do
    case $line in
      # The command is done: no need to wait for the machine's power-off,
      # which Xen on arm64 under QEMU never completes.
      "=== jitsu: exit "*) kill "$qemu_pid" 2>/dev/null; break ;;
      "=== jitsu: "*" ready "*) go=1 ;;
      # The init's own warnings (a module that did not load) come before
      # the ready marker; they go to stderr.
      "=== jitsu: "*)
        if [[ -n $go ]]; then printf '%s\n' "$line"; else printf 'testbed: %s\n' "${line#=== jitsu: }" >&2; fi ;;
      *"Initramfs unpacking failed"* | *"Kernel panic"* | *"Panic on CPU"*)
        if [[ -z $go ]]; then
          echo "testbed: the $bed machine failed to start: $line" >&2
          kill "$qemu_pid" 2>/dev/null
          break
        fi ;;
      *) [[ -n $go ]] && printf '%s\n' "$line" ;;
    esac
  done
) &
printer=$!
wait "$qemu_pid" || true
qemu_pid=
wait "$printer" 2>/dev/null || true
status=$(tr -d '\r' <"$console" | sed -n 's/^=== jitsu: exit \([0-9]*\)$/\1/p' | tail -1)
if [[ -z $status ]]; then
  echo "testbed: the command did not finish in the $bed machine (timeout ${JITSU_TESTBED_TIMEOUT:-1500} s, or it died); console tail:" >&2
  tr -d '\r' <"$console" | tail -n 60 >&2
  exit 125
fi
exit "$status"
