#!/usr/bin/env bash
# The Xen test bed: Xen 4.17 with a Debian dom0, under QEMU's software
# emulation (these machines' KVM cannot run a hypervisor; see
# xen-testbed/image.sh for what the image holds and how it is cached).
#
#   xen-testbed.sh run [--share DIR] [--] COMMAND [ARG...]
#       boots, runs COMMAND in dom0 (cwd /jitsu, DIR's contents copied there),
#       prints its output and exits with its status (125: it never finished)
#   xen-testbed.sh shell [--share DIR]
#       an interactive dom0 on this terminal (`busybox poweroff -f` to leave)
#
# DIR rides as a second cpio appended to the dom0 initramfs, which the kernel
# unpacks on top of the first: no disk image, no 9p. Each run has its own
# temporary folder and QEMU, ended by pid whatever happens.
#
# Environment: JITSU_XEN_TIMEOUT (seconds, default 1500), JITSU_XEN_CONSOLE
# (keep the whole console log in this file), JITSU_XEN_MEM (MiB for the
# machine, default 3072; dom0 has 1536 of it, its initramfs included).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

usage() { sed -n '6,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
(($#)) || usage
mode=$1; shift
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

image=$("$here/xen-testbed/image.sh")
stage=$(mktemp -d /tmp/jitsu-xen.XXXXXX)
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
  printf '%q ' "$@" >"$stage/command"
  { echo '#!/bin/sh'; cat "$stage/command"; echo; } >"$stage/payload/jitsu/run"
else
  printf '#!/bin/sh\necho "dom0 shell: busybox poweroff -f to leave"\nsetsid cttyhack sh -l\n' >"$stage/payload/jitsu/run"
fi
(cd "$stage/payload" && find jitsu | cpio -o -H newc --quiet) >"$stage/payload.cpio"
cat "$image/dom0.cpio" "$stage/payload.cpio" >"$stage/initrd"
rm -rf "$stage/payload" "$stage/payload.cpio"

# qemu64,+svm,+npt is the CPU that works: `max` breaks the PV dom0 (SMAP) and
# PVH guests (RDTSCP), and without NPT Xen has no HAP (Debian's Xen has no
# shadow paging, so no PVH domain could be built). -initrd lists multiboot
# modules separated by commas (a comma inside one would be written twice).
qemu=(
  "$image/qemu/usr/bin/qemu-system-x86_64" -L "$image/qemu/usr/share/qemu" -L "$image/qemu/usr/share/seabios"
  -machine q35 -cpu qemu64,+svm,+npt -m "${JITSU_XEN_MEM:-3072}" -smp 2
  -display none -vga none -nic none -no-reboot
  -kernel "$image/xen" -append "console=com1 com1=115200,8n1 dom0_mem=1536M,max:1536M"
  -initrd "$image/vmlinuz console=hvc0 earlyprintk=xen loglevel=3,$stage/initrd"
)

if [[ $mode == shell ]]; then
  "${qemu[@]}" -chardev stdio,id=console,signal=off -serial chardev:console
  exit 0
fi

console=${JITSU_XEN_CONSOLE:-$stage/console}
: >"$console"
# The command's lines (between the markers) go to stdout as they come; a
# dom0 that cannot start (its root does not fit, its kernel panics) ends the
# run at once rather than at the timeout.
timeout "${JITSU_XEN_TIMEOUT:-1500}" "${qemu[@]}" -chardev file,id=console,path="$console" \
  -serial chardev:console </dev/null &
qemu_pid=$!
(
  go=
  tail -n +1 -F --pid="$qemu_pid" "$console" 2>/dev/null | tr -d '\r' | while IFS= read -r line; do
    case $line in
      "=== jitsu: exit "*) break ;;
      "=== jitsu: dom0 ready"*) go=1 ;;
      *"Initramfs unpacking failed"* | *"Kernel panic"* | *"Panic on CPU"*)
        if [[ -z $go ]]; then
          echo "xen-testbed: dom0 failed to start: $line" >&2
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
  echo "xen-testbed: the command did not finish (timeout ${JITSU_XEN_TIMEOUT:-1500} s or dom0 died); console tail:" >&2
  tr -d '\r' <"$console" | tail -n 60 >&2
  exit 125
fi
exit "$status"
