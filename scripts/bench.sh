#!/usr/bin/env bash
# `make bench`: the benchmarks on every stack of the test gate (or BJI_STACKS), written to BENCHMARKS.md; like
# the gate, it stops whatever it started, also when interrupted, and fails if anything was left behind.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/guard.sh bench
scripts/stacks.sh prepare
./target/release/examples/bench "$@"
cp target/bench/BENCHMARKS.md BENCHMARKS.md
