# blockjobinfo. `make test` and `make demo` install missing Debian packages first (as root).
CARGO ?= cargo
PREFIX ?= /usr/local
# Where the library goes: Debian's multiarch directory, for example, with LIBDIR=/usr/lib/x86_64-linux-gnu.
LIBDIR ?= $(PREFIX)/lib
MANDIR ?= $(PREFIX)/share/man
DESTDIR ?=
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
# Cargo's target directory (CARGO_TARGET_DIR, as cargo reads it: `make deb` builds a copy of the tree into the
# checkout's).
TARGET := $(or $(CARGO_TARGET_DIR),target)
# Where `make test` stages an install to test it.
STAGE := $(CURDIR)/target/stage

FUZZ_SECONDS ?= 5
# The Python package's build tools (maturin, mypy, from PyPI), apart from the system's Python.
PYVENV := $(TARGET)/pyvenv
# `make wheel` builds a release wheel; `make test` a debug one (built on the debug tree it already has, in
# seconds rather than minutes: the same code, for its tests).
WHEEL_PROFILE ?= --release

.PHONY: all deps stacks build release man lint test demo header install deb abi fuzz fuzz-check soak bench mutants test-breaks wheel asan clean

all: build

deps:
	scripts/deps.sh

# Starts making the stacks' roots (scripts/stacks.sh); the gate waits for them.
stacks:
	scripts/stacks.sh prepare-start

# The shared library is linked from the crate's staticlib with versioned symbols (libblockjobinfo.map), as
# libblockjobinfo.so with the soname libblockjobinfo.so.0 (and that link, for programs built in the tree).
build:
	$(CARGO) build --all-targets
	scripts/link-so.sh $(TARGET)/debug

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	# The library as the Python module builds it (no tool, no C layer): clippy above unifies the features.
	$(CARGO) clippy -p blockjobinfo --lib --no-default-features -- -D warnings

# Every stack of tests/stacks.conf (the host's Debian 12 packages, cached Debian 13 and 14 roots, prepared in
# the background while the rest builds); BJI_STACKS=deb12 for the host's alone. scripts/gate.sh also runs the
# suite from a root-only view of the checkout and fails if a test left anything.
test: deps stacks build lint asan
	$(MAKE) install DESTDIR=$(STAGE) PREFIX=/usr
	$(MAKE) deb
	$(MAKE) wheel WHEEL_PROFILE=
	$(MAKE) fuzz-check
	BJI_STAGE=$(STAGE) CARGO="$(CARGO)" scripts/gate.sh
	scripts/mutants.sh if-changed

# The Python package: an abi3 wheel (CPython 3.11 and later) and its sdist in target/wheels, built with maturin;
# pip's and pytest's wheels in target/wheelhouse, for the stacks' venvs (tests/python_package.rs).
# Linked by zig (ziglang, from PyPI) against glibc 2.28: a manylinux_2_28 wheel (RHEL 8 and its clones), which
# auditwheel, abi3audit and twine then check (tests/python_package.rs). Against the system's libgcc_s, not
# zig's own unwinder: glibc's pthread_exit unwinds with libgcc_s, and a Rust frame read by another unwinder
# crashes the thread PyO3 would park at Python's exit (tests/py/package/test_exit.py).
wheel:
	test -x $(PYVENV)/bin/abi3audit || { { test -d $(PYVENV) || /usr/bin/python3 -m venv $(PYVENV); } && \
		$(PYVENV)/bin/pip install -q 'maturin>=1.10,<2' 'mypy>=1' 'pytest>=7' 'ziglang>=0.17,<0.18' twine abi3audit auditwheel; }
	rm -f $(TARGET)/wheels/blockjobinfo-*
	PATH=$(abspath $(PYVENV))/bin:$$PATH $(PYVENV)/bin/maturin build -q $(WHEEL_PROFILE) --zig \
		--compatibility manylinux_2_28 -m python/Cargo.toml -o $(TARGET)/wheels --interpreter /usr/bin/python3 \
		-- -C link-arg=$$(gcc -print-file-name=libgcc_s.so.1)
	$(PYVENV)/bin/maturin sdist -m python/Cargo.toml -o $(TARGET)/wheels
	$(PYVENV)/bin/pip download -q -d $(TARGET)/wheelhouse pip pytest qemu.qmp

# The library instrumented by nightly Rust for AddressSanitizer (its own target directory), for the close/fork
# stress harness (tests/c_shared_source.rs): ASan then checks the Rust code's loads and stores, not only C's.
asan:
	RUSTFLAGS="-Zsanitizer=address" $(CARGO) +nightly build --lib --target x86_64-unknown-linux-gnu \
		--target-dir $(TARGET)/asan

# Short fuzz runs (part of `make test`); `make fuzz` runs each target for 5 minutes.
fuzz-check:
	scripts/fuzz.sh $(FUZZ_SECONDS)

fuzz:
	scripts/fuzz.sh 300

# Mutation testing of the pure layers, the monitor's bookkeeping and the exporter's text format, with the fast
# tests (about 9 minutes); survivors must be listed, with why,
# in mutants/equivalent.txt (tests/mutants_list.rs checks in `make test` that the list still fits the code).
# `make test` runs it again whenever what it rests on changed since the run recorded in mutants/covered.sha256.
mutants:
	scripts/mutants.sh run

# Each guarantee turned off in turn must turn its guard tests red (part of `make test`, through scripts/gate.sh).
test-breaks:
	CARGO="$(CARGO)" scripts/test-breaks.sh

# The benchmarks (release build) on every stack (BJI_STACKS=deb12 for the host's alone), written to
# BENCHMARKS.md above its hand-written part; see that file.
bench: deps wheel
	$(CARGO) build --release --all-targets
	scripts/link-so.sh $(TARGET)/release
	scripts/bench.sh

# The long runs: the concurrency tests at full length (16 threads x 10,000 calls, shared and separate sources,
# with forks), and 10,000 scrapes of `metrics --listen` under churn and two libvirtd restarts, its RSS and open
# descriptors reported at the start, the middle and the end (BJI_STACKS as for the gate).
soak: deps build
	scripts/stacks.sh prepare
	BJI_SOAK_CALLS=10000 $(CARGO) test --test concurrency -- --nocapture
	skip=$$(for s in $$(BJI_STACKS= scripts/stacks.sh names); do scripts/stacks.sh names | grep -qx $$s || echo --skip $$s::; done); \
	BJI_SOAK_SCRAPES=10000 $(CARGO) test --test exporter_soak -- --nocapture $$skip
	scripts/stacks.sh soak-report
	scripts/stacks.sh report >/dev/null

demo: deps build
	$(CARGO) run --quiet --example demo

# Regenerates include/blockjobinfo.h from the sources (tests/header.rs fails while it is stale).
header:
	BJI_BLESS=1 $(CARGO) test --test header

release:
	$(CARGO) build --release
	scripts/link-so.sh $(TARGET)/release

# blockjobinfo(1) from the tool's own argument definitions; libblockjobinfo(3) is written by hand.
man: release
	mkdir -p $(TARGET)/man
	$(TARGET)/release/blockjobinfo generate-man > $(TARGET)/man/blockjobinfo.1.tmp
	mv $(TARGET)/man/blockjobinfo.1.tmp $(TARGET)/man/blockjobinfo.1
	cp man/libblockjobinfo.3 $(TARGET)/man/libblockjobinfo.3

# Debian packages (libblockjobinfo0, libblockjobinfo-dev, blockjobinfo) in target/deb, checked by lintian.
deb:
	scripts/deb.sh

# Refreshes the ABI baseline (abi/libblockjobinfo.abi) on purpose, after a compatible change that
# `make test` reported.
abi: build
	scripts/abi.sh update

# The library with a versioned soname (libblockjobinfo.so.0) and its development link, the header, a
# pkg-config file, the tool, both manual pages and the Prometheus rules.
install: man
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/bin \
		$(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man3
	install -m 644 $(TARGET)/release/libblockjobinfo.so $(DESTDIR)$(LIBDIR)/libblockjobinfo.so.$(VERSION)
	ln -sf libblockjobinfo.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libblockjobinfo.so.0
	ln -sf libblockjobinfo.so.0 $(DESTDIR)$(LIBDIR)/libblockjobinfo.so
	install -m 644 include/blockjobinfo.h $(DESTDIR)$(PREFIX)/include/blockjobinfo.h
	install -m 755 $(TARGET)/release/blockjobinfo $(DESTDIR)$(PREFIX)/bin/blockjobinfo
	install -m 644 $(TARGET)/man/blockjobinfo.1 $(DESTDIR)$(MANDIR)/man1/blockjobinfo.1
	install -m 644 $(TARGET)/man/libblockjobinfo.3 $(DESTDIR)$(MANDIR)/man3/libblockjobinfo.3
	install -d $(DESTDIR)$(PREFIX)/share/blockjobinfo/prometheus
	install -m 644 prometheus/blockjobinfo.rules.yml $(DESTDIR)$(PREFIX)/share/blockjobinfo/prometheus/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@VERSION@|$(VERSION)|' blockjobinfo.pc.in \
		> $(DESTDIR)$(LIBDIR)/pkgconfig/blockjobinfo.pc

clean:
	$(CARGO) clean
