#!/usr/bin/env bash
# Runs each cargo-fuzz target for SECONDS (default 20), from the committed seeds; new corpus entries go to
# target/fuzz-corpus. A crash fails the run and names the input to add to tests/fuzz_regressions/.
set -euo pipefail
seconds=${1:-20}
cd "$(dirname "$0")/.."
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz (crates.io)" >&2
    cargo +nightly install cargo-fuzz --locked
fi
for target in qmp_stream translate_reply web_config http_request; do
    scratch=target/fuzz-corpus/$target
    mkdir -p "$scratch"
    echo "fuzzing $target for ${seconds}s" >&2
    log=target/fuzz-$target.log
    # The whole output is kept: a crash's report (its input, its stack) is printed whole, the rest cut short.
    if ! (cd fuzz && cargo +nightly fuzz run "$target" "../$scratch" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=1024 -print_final_stats=1) >"$log" 2>&1; then
        cat "$log" >&2
        echo "fuzz: $target failed (its whole output above, and in $log)" >&2
        exit 1
    fi
    tail -n 12 "$log"
done
