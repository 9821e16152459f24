# blockjobinfo. `make test` and `make demo` install missing Debian packages first (as root).
CARGO ?= cargo
LIBDIR := target/debug
PREFIX ?= /usr/local
DESTDIR ?=
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
# Where `make test` stages an install to test it.
STAGE := $(CURDIR)/target/stage

FUZZ_SECONDS ?= 15

.PHONY: all deps build release lint test demo header install fuzz fuzz-check soak bench clean

all: build

deps:
	scripts/deps.sh

# The cdylib has the soname libblockjobinfo.so.0: give programs linked in the build tree that name too.
build:
	$(CARGO) build --all-targets
	ln -sf libblockjobinfo.so $(LIBDIR)/libblockjobinfo.so.0

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# Both stacks (Debian 12's host packages, a cached Debian 13 root); BJI_STACKS=deb12 for the host's alone.
# scripts/gate.sh also runs the suite from a root-only view of the checkout and fails if a test left anything.
test: deps build lint
	$(MAKE) install DESTDIR=$(STAGE) PREFIX=/usr
	$(MAKE) fuzz-check
	BJI_STAGE=$(STAGE) CARGO="$(CARGO)" scripts/gate.sh

# Short fuzz runs (part of `make test`); `make fuzz` runs each target for 5 minutes.
fuzz-check:
	scripts/fuzz.sh $(FUZZ_SECONDS)

fuzz:
	scripts/fuzz.sh 300

# The benchmarks (release build) on both stacks (BJI_STACKS=deb12 for the host's alone), written to
# BENCHMARKS.md above its hand-written part; see that file.
bench: deps
	$(CARGO) build --release --all-targets
	scripts/bench.sh

# The concurrency tests at full length: 16 threads x 10,000 calls, shared and separate sources, with forks.
soak: build
	BJI_SOAK_CALLS=10000 $(CARGO) test --test concurrency -- --nocapture

demo: deps build
	$(CARGO) run --quiet --example demo

# Regenerates include/blockjobinfo.h from the sources (tests/header.rs fails while it is stale).
header:
	BJI_BLESS=1 $(CARGO) test --test header

release:
	$(CARGO) build --release

# The library with a versioned soname (libblockjobinfo.so.0) and its development link, the header, a
# pkg-config file and the tool.
install: release
	install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/bin
	install -m 755 target/release/libblockjobinfo.so $(DESTDIR)$(PREFIX)/lib/libblockjobinfo.so.$(VERSION)
	ln -sf libblockjobinfo.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libblockjobinfo.so.0
	ln -sf libblockjobinfo.so.0 $(DESTDIR)$(PREFIX)/lib/libblockjobinfo.so
	install -m 644 include/blockjobinfo.h $(DESTDIR)$(PREFIX)/include/blockjobinfo.h
	install -m 755 target/release/blockjobinfo $(DESTDIR)$(PREFIX)/bin/blockjobinfo
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' blockjobinfo.pc.in \
		> $(DESTDIR)$(PREFIX)/lib/pkgconfig/blockjobinfo.pc

clean:
	$(CARGO) clean
