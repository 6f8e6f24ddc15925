# Jitsu: `make demo`, `make test`, `make bench`. Run as root on Debian 12.
SHELL := /bin/bash
CARGO ?= cargo
GUEST_DIR := guest/target/x86_64-unknown-linux-gnu/release

export JITSU_BIN := $(CURDIR)/target/release/jitsu
export JITSU_GUESTS := $(CURDIR)/$(GUEST_DIR)
export JITSU_XEN_GUESTS := $(CURDIR)/guest/target/xen/x86_64-unknown-linux-gnu/release
# The monitor, linked statically: no dynamic loader on every monitor's start
# (exec to main 0.7 ms instead of 1.2 here) and ~50 KiB less private memory
# per parked service. `jitsu run` and the shim find it through this variable.
export JITSU_MONITOR := $(CURDIR)/target/x86_64-unknown-linux-gnu/release/jitsu-monitor

.PHONY: all deps guests build images lint test demo bench clean xen-shell

all: build

## Debian packages the tests, demo and benchmarks use (installed only if missing).
deps:
	@scripts/install-deps.sh

## The unikernels (guest/ is its own no_std workspace): for Jitsu's KVM
## monitor, and the same sources for Xen PVH domains (guest/target/xen/).
guests:
	cd guest && $(CARGO) build --release
	cd guest && $(CARGO) build --release --target-dir target/xen \
	  -p hello-http -p abi-test -p counter -p probe \
	  --features hello-http/xen,abi-test/xen,counter/xen,probe/xen

## Host binaries: jitsu, the shim, the test fixtures, the benchmark harness
## (and its static native server, the runc baseline).
build: deps guests
	$(CARGO) build --release --workspace
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --target x86_64-unknown-linux-gnu -p jitsu-monitor
	cd bench/native-http && RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --target x86_64-unknown-linux-gnu

## The example OCI images (oci-images/), in build/images/.
images: build
	@oci-images/build.sh

lint:
	$(CARGO) fmt --all -- --check
	cd guest && $(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	cd guest && $(CARGO) clippy --release -- -D warnings
	cd guest && $(CARGO) clippy --release --target-dir target/xen \
	  -p hello-http -p abi-test -p counter -p probe \
	  --features hello-http/xen,abi-test/xen,counter/xen,probe/xen -- -D warnings

## Every test: unit, property and end to end (needs root and /dev/kvm).
## cargo-nextest when present (one summary line at the end), else cargo test.
## Then the containerd and CRI suites again against containerd 2.x (Debian
## unstable's, fetched into a cache, never installed: see the script),
## selected from the whole workspace so that nothing is built again. Last,
## the Xen suite in the Xen test bed, alone: its emulated machine takes both
## cores for a couple of minutes, which would starve the timed KVM tests.
CONTAINERD_SUITES := containerd cri lifecycle install_node
test: deps build lint
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --release --workspace --no-fail-fast -E 'not binary(xen)'; \
	else \
	  $(CARGO) test --release --workspace --lib --bins --tests --no-fail-fast; \
	fi
	dir=$$(scripts/fetch-containerd2.sh) && \
	echo "== the containerd suites against $$($$dir/containerd --version)" && \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  JITSU_CONTAINERD_DIR=$$dir $(CARGO) nextest run --release --workspace --no-fail-fast \
	    -E '$(foreach s,$(CONTAINERD_SUITES),binary($(s)) |) none()'; \
	else \
	  JITSU_CONTAINERD_DIR=$$dir $(CARGO) test --release --workspace --no-fail-fast \
	    $(foreach s,$(CONTAINERD_SUITES),--test $(s)); \
	fi
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  echo "== the Xen suite, in a dom0 of the Xen test bed (scripts/testbed.sh xen)" && \
	  $(CARGO) nextest run --release --workspace --no-fail-fast -E 'binary(xen)'; \
	fi

## Boot hello-http in a private network namespace and fetch a page, narrated.
demo: deps build
	@scripts/demo.sh

## The benchmark table (ratios against baselines measured in the same run).
bench: deps build
	@target/release/jitsu-bench

## An interactive dom0 in the Xen test bed (Xen 4.17 under QEMU), with the
## built binaries and Xen guests in /jitsu. Leave with `busybox poweroff -f`.
xen-shell: build
	@share=$$(mktemp -d) && trap 'rm -rf "$$share"' EXIT && \
	  mkdir -p "$$share/bin" "$$share/guests" && \
	  cp target/release/jitsu target/release/jitsu-xen-monitor target/release/jitsu-xen-suite target/release/containerd-shim-jitsu-v1 "$$share/bin/" && \
	  cp $(JITSU_XEN_GUESTS)/abi-test $(JITSU_XEN_GUESTS)/hello-http $(JITSU_XEN_GUESTS)/counter $(JITSU_XEN_GUESTS)/probe "$$share/guests/" && \
	  scripts/testbed.sh xen shell --share "$$share"

clean:
	$(CARGO) clean
	cd guest && $(CARGO) clean
