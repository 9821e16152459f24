#!/usr/bin/env bash
# Mutation testing of the pure layers (the rules, parsing, the XML, framing, the wait's verdict on a listed
# job, a source's endings, a job's rates and state, the shared monitor's bookkeeping) and of the exporter's text format, with the fast tests, which need no
# QEMU: every mutant must be caught, or listed in mutants/equivalent.txt with why it changes nothing.
#
#   mutants.sh run         (make mutants) runs cargo-mutants twice (the library with its unit tests; the tool's
#                          exposition with the tool's); fails on a survivor that is not listed, on a baseline
#                          that fails, and on a run that caught nothing; records what it covered and its counts
#   mutants.sh if-changed  (make test) the same, when a mutated file changed since the recorded run
# (tests/mutants_list.rs, in `make test`, fails when a listed mutant's line has changed: the list is then stale.)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: mutants.sh run|if-changed}
list=mutants/equivalent.txt
mutated=(src/translate.rs src/jobs.rs src/libvirt/native.rs src/libvirt/xml.rs src/qmp/framing.rs src/verdict.rs
    src/qmp/monitor.rs src/ending.rs src/convergence.rs)
filters=()
for f in "${mutated[@]}"; do filters+=(-f "$f"); done
# All of them but the verdict machine, which the property test (an integration test) drives: its verdict on a
# listed job (`judge`), whether a job is ready (`is_ready`) and what a mirror's good end implies, which the unit
# tests cover; and of the monitor, the bookkeeping its unit tests drive (the event log, listeners, marks, a lost
# or remade connection's error, against a quiet peer of their own), not its I/O, which the fake-peer and
# real-QEMU integration tests drive.
filters+=(--re '^src/(translate|jobs|libvirt/native|libvirt/xml|qmp/framing|ending|convergence)\.rs:|^src/verdict\.rs:.*\b(judge|mirror_ended_ready|is_ready)\b|^src/qmp/monitor\.rs:.*\b(record|listen|next_within|next_before|dropped_error)\b')
# The tool's: the exposition (series by their exact labels, escaping, numbers), with the tool's unit tests.
tool=src/bin/blockjobinfo/exposition.rs
# Pinned: another version may name or count mutants otherwise.
version=27.1.0
# The listed mutants: the name before " # `the line's code` # why".
listed() { grep -v '^#' "$list" | grep -v '^$' | sed 's/ # .*//'; }
# What a run's verdict rests on: the library's sources and unit tests (src/, but the tool, tracked or new), the
# manifest, the lock file and build.rs, the list of equivalent mutants, this script and the version that ran.
covered() {
    { git ls-files -z --cached --others --exclude-standard src Cargo.toml Cargo.lock build.rs "$list" \
        scripts/mutants.sh | grep -zv '^src/bin/'; printf '%s\0' "$tool"; } | sort -zu | xargs -0 sha256sum
    echo "cargo-mutants $version"
}
if [ "$mode" = if-changed ]; then
    # `make test`: a run only when what a run rests on changed since the one recorded in mutants/covered.sha256.
    if [ -f mutants/covered.sha256 ] && [ "$(covered)" = "$(grep -v '^#' mutants/covered.sha256)" ]; then
        echo "mutants: the library, its tests and the list are as the last run covered them (mutants/covered.sha256)"
        exit 0
    fi
    echo "mutants: the library, its tests or the list changed since the last recorded run: running it" >&2
    mode=run
fi
case $mode in
run)
    if [ "$(cargo mutants --version 2>/dev/null)" != "cargo-mutants $version" ]; then
        echo "installing cargo-mutants $version (crates.io)" >&2
        cargo install cargo-mutants --locked --version "$version"
    fi
    out=target/mutants
    # No result of an earlier run may stand in for this one's.
    rm -rf "$out"
    mkdir -p "$out"
    # A mutant that times out is one the tests noticed: they did not end. Each run's unit tests take about 2 s
    # and cargo-mutants allows 20 s (ten times that), so only a mutant that loops times out, not a slow machine.
    # cargo-mutants exits 0 (all caught), 2 (some missed) or 3 (some timed out) after a real run; 4 means the
    # tests failed on the unmutated tree, 1 a usage error, 70 an internal error: nothing was tested, and that is
    # a failure.
    mutate() {
        local name=$1 rc
        shift
        CARGO_PROFILE_DEV_DEBUG=0 CARGO_PROFILE_TEST_DEBUG=0 \
            cargo mutants "$@" --output "$out/$name" --no-shuffle -j 2 && rc=0 || rc=$?
        case $rc in
        0 | 2 | 3) ;;
        4) echo "mutants ($name): the tests fail on the unmutated tree (cargo-mutants exit 4): nothing was tested" >&2; exit 1 ;;
        *) echo "mutants ($name): cargo-mutants failed (exit $rc): nothing was tested" >&2; exit 1 ;;
        esac
        [ -f "$out/$name/mutants.out/missed.txt" ] && [ -s "$out/$name/mutants.out/caught.txt" ] ||
            { echo "mutants ($name): not one mutant was caught: the tests did not run" >&2; exit 1; }
    }
    # The library alone (not the tool's dependencies), without debug info, and its unit tests: fast, no QEMU.
    mutate library "${filters[@]}" --cargo-arg=--no-default-features --cargo-arg=--lib
    # The tool's exposition, with the tool's unit tests.
    mutate tool -f "$tool" --cargo-arg=--bin=blockjobinfo
    count() { cat "$out"/*/mutants.out/"$1".txt 2>/dev/null | wc -l; }
    unexplained=$(cat "$out"/*/mutants.out/missed.txt | grep -vxF -f <(listed) || true)
    counts="caught $(count caught), missed $(count missed) ($(listed | wc -l) listed as equivalent), timed out $(count timeout), unviable $(count unviable)"
    echo "mutants: $counts"
    if [ -n "$unexplained" ]; then
        echo "mutants: survivors neither caught nor listed in $list (each: the mutant, then the line it changes):" >&2
        while IFS= read -r m; do
            f=${m%%:*} rest=${m#*:} l=${rest%%:*}
            printf '%s # `%s`\n' "$m" "$(sed -n "${l}p" "$f" | sed 's/^ *//')" >&2
        done <<<"$unexplained"
        exit 1
    fi
    # What this run covered, so that `make test` runs it again when any of it changes, and what it found (commit
    # the file; `#` lines are not compared).
    { echo "# $(date -u +%F): $counts"; covered; } >mutants/covered.sha256
    ;;
*)
    echo "usage: mutants.sh run|if-changed" >&2
    exit 2
    ;;
esac
