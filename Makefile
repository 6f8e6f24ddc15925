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

.PHONY: all deps guests build cross images lint test demo bench clean xen-shell arm64-shell xen-arm64-shell

all: build

## Debian packages the tests, demo and benchmarks use (installed only if missing).
deps:
	@scripts/install-deps.sh

## The unikernels (guest/ is its own no_std workspace): for Jitsu's KVM
## monitor on x86-64 and on arm64 (Debian's rustc, see scripts/cross-build.sh:
## the images the tests pack carry both), and the same sources for Xen PVH
## domains (guest/target/xen/).
guests: deps
	cd guest && $(CARGO) build --release
	cd guest && RUSTC=/usr/bin/rustc $(CARGO) build --release --target aarch64-unknown-linux-gnu
	cd guest && $(CARGO) build --release --target-dir target/xen \
	  -p hello-http -p abi-test -p counter -p probe \
	  --features hello-http/xen,abi-test/xen,counter/xen,probe/xen

## Host binaries: jitsu, the shim, the test fixtures, the benchmark harness
## (and its static native server, the runc baseline).
build: deps guests
	$(CARGO) build --release --workspace
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --target x86_64-unknown-linux-gnu -p jitsu-monitor
	cd bench/native-http && RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --target x86_64-unknown-linux-gnu

## Everything for ARM nodes (aarch64), statically linked (but the Xen
## backend, which links the dom0's libxl), and the unikernels as arm64 Xen
## domains: scripts/cross-build.sh.
cross: deps
	@scripts/cross-build.sh

## The example OCI images (oci-images/), in build/images/.
images: build cross
	@oci-images/build.sh

## Clippy for aarch64 is Debian's (rust-web-clippy), with its rustc: the
## guests and the crate with the arm64 backend.
DEBIAN_CLIPPY := PATH=/usr/bin:$$PATH RUSTC=/usr/bin/rustc cargo clippy --release --target aarch64-unknown-linux-gnu
lint:
	$(CARGO) fmt --all -- --check
	cd guest && $(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	cd guest && $(CARGO) clippy --release -- -D warnings
	cd guest && $(CARGO) clippy --release --target-dir target/xen \
	  -p hello-http -p abi-test -p counter -p probe \
	  --features hello-http/xen,abi-test/xen,counter/xen,probe/xen -- -D warnings
	cd guest && $(DEBIAN_CLIPPY) -- -D warnings
	cd guest && $(DEBIAN_CLIPPY) --target-dir target/xen \
	  -p hello-http -p abi-test -p counter -p probe \
	  --features hello-http/xen,abi-test/xen,counter/xen,probe/xen -- -D warnings
	$(DEBIAN_CLIPPY) -p jitsu-kvm --all-targets -- -D warnings

## Every test: unit, property and end to end (needs root and /dev/kvm).
## cargo-nextest when present (one summary line at the end), else cargo test.
## Then the containerd and CRI suites again against containerd 2.x (Debian
## unstable's, fetched into a cache, never installed: see the script),
## selected from the whole workspace so that nothing is built again. Then
## the unit and property tests of the arm64 build under qemu-user. Last, the
## suites of the test beds, each alone: an emulated machine takes both cores
## for minutes, which would starve the timed KVM tests.
CONTAINERD_SUITES := containerd cri lifecycle install_node
BED_SUITES := xen arm64 xen_arm64
# As scripts/cross-build.sh builds them: Xen's crates link the machine's
# amd64 libxl, the end-to-end tests run in the arm64 bed, and the benchmarks
# have no tests.
# What qemu-user cannot show, each run for real in the arm64 bed instead
# (tests/tests/arm64.rs): qemu-user 7.2 has no openat2 (the shim's image
# reads), and a seccomp filter there would filter the emulator's own calls.
QEMU_USER_SKIP := (package(containerd-shim-jitsu-v1) & test(/^image::tests::/)) | \
  (package(jitsu-kvm) & test(/^seccomp::tests::(what_a_monitor_does_is_allowed|a_syscall_outside_the_list_kills_the_monitor)$$/))
CROSS_ENV := RUSTC=/usr/bin/rustc
CROSS_UNIT := --workspace --exclude jitsu-xen --exclude jitsu-xen-monitor --exclude jitsu-e2e --exclude jitsu-bench --lib --bins
test: deps build cross lint
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --release --workspace --no-fail-fast -E '$(foreach s,$(BED_SUITES),not binary($(s)) &) all()'; \
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
	echo "== the unit and property tests of the arm64 build, under qemu-user"
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CROSS_ENV) $(CARGO) nextest run --release --target aarch64-unknown-linux-gnu --profile qemu-user $(CROSS_UNIT) -E 'not ($(QEMU_USER_SKIP))'; \
	else \
	  $(CROSS_ENV) $(CARGO) test --release --target aarch64-unknown-linux-gnu --no-fail-fast $(CROSS_UNIT) \
	    --exclude containerd-shim-jitsu-v1 --exclude jitsu-kvm && \
	  $(CROSS_ENV) $(CARGO) test --release --target aarch64-unknown-linux-gnu --no-fail-fast --lib --bins \
	    -p containerd-shim-jitsu-v1 -p jitsu-kvm -- \
	    --skip image::tests:: --skip seccomp::tests::what_a_monitor_does_is_allowed \
	    --skip seccomp::tests::a_syscall_outside_the_list_kills_the_monitor; \
	fi
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  echo "== the Xen suite, in a dom0 of the Xen test bed (scripts/testbed.sh xen)" && \
	  $(CARGO) nextest run --release --workspace --no-fail-fast -E 'binary(xen)' && \
	  echo "== the arm64 suite, on the arm64 test bed (scripts/testbed.sh arm64)" && \
	  $(CARGO) nextest run --release --workspace --no-fail-fast -E 'binary(arm64)' && \
	  echo "== the Xen suite on arm64, in a dom0 of the xen-arm64 test bed" && \
	  $(CARGO) nextest run --release --workspace --no-fail-fast -E 'binary(xen_arm64)'; \
	fi

## Boot hello-http in a private network namespace and fetch a page, narrated.
demo: deps build
	@scripts/demo.sh

## The benchmark table (ratios against baselines measured in the same run).
bench: deps build cross
	@$(CROSS_ENV) $(CARGO) build --release --quiet --target aarch64-unknown-linux-gnu -p jitsu-bench
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

## A shell on the arm64 test bed (an arm64 Debian node with KVM, under
## QEMU), with the cross build and the arm64 guests in /jitsu.
arm64-shell: cross
	@share=$$(mktemp -d) && trap 'rm -rf "$$share"' EXIT && \
	  mkdir -p "$$share/bin" "$$share/guests" && \
	  for b in jitsu jitsu-monitor containerd-shim-jitsu-v1; do \
	    aarch64-linux-gnu-strip --strip-debug -o "$$share/bin/$$b" target/aarch64-unknown-linux-gnu/release/$$b; done && \
	  cp guest/target/aarch64-unknown-linux-gnu/release/{abi-test,hello-http,counter,probe} "$$share/guests/" && \
	  scripts/testbed.sh arm64 shell --share "$$share"

## An interactive arm64 dom0 in the xen-arm64 test bed (Xen 4.17 for arm64
## under QEMU), with the cross build and the arm64 Xen guests in /jitsu.
xen-arm64-shell: cross
	@share=$$(mktemp -d) && trap 'rm -rf "$$share"' EXIT && \
	  mkdir -p "$$share/bin" "$$share/guests" && \
	  aarch64-linux-gnu-strip --strip-debug -o "$$share/bin/jitsu" target/aarch64-unknown-linux-gnu/release/jitsu && \
	  aarch64-linux-gnu-strip --strip-debug -o "$$share/bin/jitsu-xen-monitor" \
	    target/xen-arm64/aarch64-unknown-linux-gnu/release/jitsu-xen-monitor && \
	  cp guest/target/xen/aarch64-unknown-linux-gnu/release/image/{abi-test,hello-http,counter,probe} "$$share/guests/" && \
	  scripts/testbed.sh xen-arm64 shell --share "$$share"
