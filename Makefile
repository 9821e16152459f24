# blockjobinfo. `make test` and `make demo` install missing Debian packages first (as root).
CARGO ?= cargo
LIBDIR := target/debug

.PHONY: all deps build lint test demo header clean

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

test: deps build lint
	$(CARGO) test

demo: deps build
	$(CARGO) run --quiet --example demo

# Regenerates include/blockjobinfo.h from the sources (tests/header.rs fails while it is stale).
header:
	BJI_BLESS=1 $(CARGO) test --test header

clean:
	$(CARGO) clean
