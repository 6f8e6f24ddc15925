#!/usr/bin/env bash
# `make demo`: boots the hello-http unikernel on KVM in a private network
# namespace and fetches a page from it, then lazily, then through containerd
# and jitsu daemon, then as a Kubernetes pod through containerd's CRI plugin,
# saying what happens and how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."

JITSU=${JITSU_BIN:-target/release/jitsu}
GUESTS=${JITSU_GUESTS:-guest/target/x86_64-unknown-linux-gnu/release}
ARM64_GUESTS=guest/target/aarch64-unknown-linux-gnu/release
NS="jitsu-demo-$$"
LOG=$(mktemp -d)

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
now_us() { echo $(( $(date +%s%N) / 1000 )); }

cleanup() {
  [ -n "${MONITOR:-}" ] && kill "$MONITOR" 2>/dev/null && wait "$MONITOR" 2>/dev/null
  if [ -n "${CONTAINERD:-}" ]; then
    # Shims outlive containerd by design: take the containers down first.
    "${CTR[@]}" task kill -s SIGKILL hello >/dev/null 2>&1 || true
    sleep 0.2
    "${CTR[@]}" task delete hello >/dev/null 2>&1 || true
    "${CTR[@]}" container delete hello >/dev/null 2>&1 || true
    kill "$CONTAINERD" 2>/dev/null && wait "$CONTAINERD" 2>/dev/null
  fi
  [ -n "${DAEMON:-}" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
  rm -rf "/etc/netns/$NS"
  grep -F "$LOG" /proc/mounts | awk '{print $2}' | xargs -r umount -l 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$LOG"
}
trap cleanup EXIT

say "hello-http is a $(stat -c %s "$GUESTS/hello-http")-byte unikernel ELF: our Rust SDK + smoltcp, no OS underneath."
say "Making a private network namespace $NS with a TAP (jtap0, 10.77.0.1/24)."
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" tuntap add jtap0 mode tap
ip -n "$NS" addr add 10.77.0.1/24 dev jtap0
ip -n "$NS" link set jtap0 up

say "Booting it: jitsu run --net jtap0 --ip 10.77.0.2/24 hello-http (a KVM VM, guest at CPL 3)."
t0=$(now_us)
ip netns exec "$NS" "$JITSU" run --timings --net jtap0 --ip 10.77.0.2/24 --gw 10.77.0.1 \
  "$GUESTS/hello-http" >"$LOG/console" 2>"$LOG/stderr" &
MONITOR=$!
until grep -q listening "$LOG/console" 2>/dev/null; do
  kill -0 "$MONITOR" 2>/dev/null || { cat "$LOG/stderr"; exit 1; }
  sleep 0.001
done
t1=$(now_us)
say "Guest console says: $(head -1 "$LOG/console")   ($(( t1 - t0 )) µs after exec, as seen by this shell)"

say "Fetching http://10.77.0.2/ with curl from inside the namespace:"
ip netns exec "$NS" curl -sS -w '\n--- HTTP %{http_code}, connect %{time_connect}s, total %{time_total}s\n' http://10.77.0.2/
say "Again, on a kept-alive connection (two URLs, one connection):"
ip netns exec "$NS" curl -sS -o /dev/null -o /dev/null -w 'HTTP %{http_code} in %{time_total}s (new connections: %{num_connects})\n' \
  http://10.77.0.2/ http://10.77.0.2/

say "An unknown path gives 404:"
ip netns exec "$NS" curl -sS -o /dev/null -w 'HTTP %{http_code}\n' http://10.77.0.2/nope

vcpu_tid=$(grep -l '^vcpu0$' /proc/"$MONITOR"/task/*/comm 2>/dev/null | head -1 | xargs -r dirname)
if [ -n "$vcpu_tid" ]; then
  say "The vCPU thread is confined by seccomp: $(grep Seccomp: "$vcpu_tid/status" | tr -s '\t' ' ')"
fi
say "The monitor's resident memory: $(grep VmRSS /proc/"$MONITOR"/status | tr -s ' \t' ' ')"

say "Stopping it (SIGTERM: the monitor stops the guest and reports its phases)."
kill "$MONITOR"; wait "$MONITOR" 2>/dev/null || true; MONITOR=
timings=$(grep -o 'vm_create=.*first_instruction=[0-9a-z]*' "$LOG/stderr" || true)
[ -n "$timings" ] && say "Monitor phases, µs since jitsu started: ${timings}"
say "Now lazily: jitsu run --lazy parks the VM (built, loaded, confined) and lets Synjitsu answer for it."
CTL="$LOG/control.sock"
ip netns exec "$NS" "$JITSU" run --lazy --idle-timeout 1s --control "$CTL" --net jtap0 --ip 10.77.0.2/24 --gw 10.77.0.1 \
  "$GUESTS/hello-http" >"$LOG/console" 2>"$LOG/stderr" &
MONITOR=$!
until [ -S "$CTL" ]; do sleep 0.001; done
say "Status while parked: $("$JITSU" control "$CTL" status)"
say "A cold request (the SYN boots the VM and is held for it):"
ip netns exec "$NS" curl -sS -o /dev/null -w 'HTTP %{http_code}: connect %{time_connect}s, first byte %{time_starttransfer}s\n' http://10.77.0.2/
say "Status: $("$JITSU" control "$CTL" status)"
say "Idle for the 1 s timeout: the VM is destroyed and a fresh one parked..."
sleep 1.3
say "Status: $("$JITSU" control "$CTL" status)"
say "A second cold request:"
ip netns exec "$NS" curl -sS -o /dev/null -w 'HTTP %{http_code}: connect %{time_connect}s, first byte %{time_starttransfer}s\n' http://10.77.0.2/
say "Retransmitted SYNs seen by the client's kernel: $(ip netns exec "$NS" nstat -az TcpExtTCPSynRetrans 2>/dev/null | awk '/TCPSynRetrans/ {print $2}')"
kill "$MONITOR"; wait "$MONITOR" 2>/dev/null || true; MONITOR=
say "Now through containerd, as a node would run it (the demo TAP goes; the shim brings its own bridge)."
ip -n "$NS" link del jtap0
CTD="$LOG/containerd"; mkdir -p "$CTD"
# In a folder of its own that others may enter: jailed monitors see only it.
export XENSTORED_PATH="$LOG/xenstore/socket"
mkdir -p "/etc/netns/$NS" && echo "nameserver 127.0.0.1" > "/etc/netns/$NS/resolv.conf"
say "Starting jitsu daemon in the namespace: XenStore on $XENSTORED_PATH, DNS for jitsu.internal on 127.0.0.1:53."
ip netns exec "$NS" "$JITSU" daemon --dns-listen 127.0.0.1:53 --xenstore-listen "$XENSTORED_PATH" 2>"$LOG/daemon.log" &
DAEMON=$!
say "Starting a private containerd (root, state and socket under $CTD) with containerd-shim-jitsu-v1 on its PATH."
nsenter --net="/run/netns/$NS" env PATH="$(dirname "$JITSU"):$PATH" JITSU_STATE_DIR="$CTD/jitsu" XENSTORED_PATH="$XENSTORED_PATH" \
  containerd --root "$CTD/root" --state "$CTD/state" --address "$CTD/sock" >"$CTD/log" 2>&1 &
CONTAINERD=$!
CTR=(ctr --address "$CTD/sock")
until "${CTR[@]}" version >/dev/null 2>&1; do sleep 0.05; done
say "Packing hello-http as an OCI image for x86-64 and arm64 (DNS name hello, idle timeout 2 s) and importing it; containerd unpacks this node's:"
"$JITSU" pack --kernel "$GUESTS/hello-http" --kernel "$ARM64_GUESTS/hello-http" --name jitsu/hello:latest --dns-name hello --idle-timeout 2s -o "$LOG/hello.tar"
"${CTR[@]}" images import "$LOG/hello.tar"
t0=$(now_us)
"${CTR[@]}" run -d --runtime io.containerd.jitsu.v1 docker.io/jitsu/hello:latest hello
say "ctr run took $(( $(now_us) - t0 )) µs. containerd sees: $("${CTR[@]}" task ls | tail -1 | tr -s ' ')"
say "jitsu ps (the unikernel is parked: nothing has run yet):"
"$JITSU" ps
say "A DNS lookup answers at once and asks for the boot:"
ip netns exec "$NS" dig +noall +answer +stats hello.jitsu.internal | grep -E "IN|Query time"
sleep 0.05
"$JITSU" ps
say "A page, by name:"
ip netns exec "$NS" curl -sS -o /dev/null -w 'HTTP %{http_code}: lookup %{time_namelookup}s, connect %{time_connect}s, first byte %{time_starttransfer}s\n' http://hello.jitsu.internal/
say "Waiting 2.5 s: idle, so the VM is destroyed and a fresh one parked; the task stays running."
sleep 2.5
"$JITSU" ps
say "containerd sees: $("${CTR[@]}" task ls | tail -1 | tr -s ' ')"
say "A second cold request (lookup, boot on the way, page):"
ip netns exec "$NS" curl -sS -o /dev/null -w 'HTTP %{http_code}: lookup %{time_namelookup}s, connect %{time_connect}s, first byte %{time_starttransfer}s\n' http://hello.jitsu.internal/
say "Conduit: two unikernels on one node talk over shared memory, found by name."
say "Packing the counter (Conduit name counter) and hello-http asking it for visit numbers (hello-counter):"
"$JITSU" pack --kernel "$GUESTS/counter" --name jitsu/counter:latest --conduit counter -o "$LOG/counter.tar"
"$JITSU" pack --kernel "$GUESTS/hello-http" --name jitsu/hello-counter:latest --conduit hello-counter \
  --dns-name hello-counter --cmdline "hello-counter counter=counter" -o "$LOG/hello-counter.tar"
"${CTR[@]}" images import "$LOG/counter.tar" >/dev/null
"${CTR[@]}" images import "$LOG/hello-counter.tar" >/dev/null
"${CTR[@]}" run -d --runtime io.containerd.jitsu.v1 docker.io/jitsu/counter:latest counter
"${CTR[@]}" run -d --runtime io.containerd.jitsu.v1 docker.io/jitsu/hello-counter:latest hello-counter
say "Both parked. XenStore's /conduit (each name and the domain that holds it):"
XENSTORED_PATH="$XENSTORED_PATH" xenstore-ls /conduit
say "A page from hello-counter: its GET boots it, and its question over Conduit boots the counter:"
ip netns exec "$NS" curl -sS http://hello-counter.jitsu.internal/ | grep -o "Visit number [0-9]*, counted by another unikernel over Conduit."
ip netns exec "$NS" curl -sS http://hello-counter.jitsu.internal/ | grep -o "Visit number [0-9]*, counted by another unikernel over Conduit."
"$JITSU" ps
say "Stopping: ctr task kill, task delete, container delete."
for task in hello counter hello-counter; do
  "${CTR[@]}" task kill "$task"
  until "${CTR[@]}" task ls | grep -E "^$task " | grep -q STOPPED; do sleep 0.05; done
  "${CTR[@]}" task delete "$task" >/dev/null
  "${CTR[@]}" container delete "$task"
done
say "Left behind: interfaces $(ip -n "$NS" -o link show | awk -F': ' '{print $2}' | tr '\n' ' '); registry: $("$JITSU" ps --json)"
"$(dirname "$JITSU")/jitsu-cri-demo"
say "Done. Everything is removed on exit."
