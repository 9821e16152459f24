#!/usr/bin/env bash
# Mutation testing of the pure layers (the rules, parsing, the XML, framing, and the wait's verdict on a listed
# job) with the fast tests, which need no QEMU: every mutant must be caught, or listed in
# mutants/equivalent.txt with why it changes nothing.
#
#   mutants.sh run         (make mutants) runs cargo-mutants; fails on a survivor that is not listed, on a
#                          baseline that fails, and on a run that caught nothing; records what it covered
#   mutants.sh if-changed  (make test) the same, when a mutated file changed since the recorded run
# (tests/mutants_list.rs, in `make test`, fails when a listed mutant's line has changed: the list is then stale.)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: mutants.sh run|if-changed}
list=mutants/equivalent.txt
mutated=(src/translate.rs src/jobs.rs src/libvirt/native.rs src/libvirt/xml.rs src/qmp/framing.rs src/verdict.rs)
filters=()
for f in "${mutated[@]}"; do filters+=(-f "$f"); done
# All of them but the verdict machine, which the property test (an integration test) drives: its verdict on a
# listed job (`judge`) and what a mirror's good end implies, which the unit tests cover.
filters+=(--re '^src/(translate|jobs|libvirt/native|libvirt/xml|qmp/framing)\.rs:|^src/verdict\.rs:.*\b(judge|mirror_ended_ready)\b')
# Pinned: another version may name or count mutants otherwise.
version=27.1.0
# The listed mutants: the name before " # `the line's code` # why".
listed() { grep -v '^#' "$list" | grep -v '^$' | sed 's/ # .*//'; }
# What a run's verdict rests on: the library's sources and unit tests (src/, but the tool, tracked or new), the
# manifest, the lock file and build.rs, the list of equivalent mutants, this script and the version that ran.
covered() {
    git ls-files -z --cached --others --exclude-standard src Cargo.toml Cargo.lock build.rs "$list" \
        scripts/mutants.sh | grep -zv '^src/bin/' | sort -zu | xargs -0 sha256sum
    echo "cargo-mutants $version"
}
if [ "$mode" = if-changed ]; then
    # `make test`: a run only when what a run rests on changed since the one recorded in mutants/covered.sha256.
    if [ -f mutants/covered.sha256 ] && [ "$(covered)" = "$(cat mutants/covered.sha256)" ]; then
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
    rm -rf "$out/mutants.out" "$out/mutants.out.old"
    mkdir -p "$out"
    # The library alone (not the tool's dependencies), without debug info, and its unit tests: fast, no QEMU.
    # cargo-mutants exits 0 (all caught), 2 (some missed) or 3 (some timed out) after a real run; 4 means the
    # tests failed on the unmutated tree, 1 a usage error, 70 an internal error: nothing was tested, and that is
    # a failure.
    CARGO_PROFILE_DEV_DEBUG=0 CARGO_PROFILE_TEST_DEBUG=0 \
        cargo mutants "${filters[@]}" --output "$out" --no-shuffle -j 2 \
        --cargo-arg=--no-default-features --cargo-arg=--lib && rc=0 || rc=$?
    case $rc in
    0 | 2 | 3) ;;
    4) echo "mutants: the tests fail on the unmutated tree (cargo-mutants exit 4): nothing was tested" >&2; exit 1 ;;
    *) echo "mutants: cargo-mutants failed (exit $rc): nothing was tested" >&2; exit 1 ;;
    esac
    missed=$out/mutants.out/missed.txt
    caught=$out/mutants.out/caught.txt
    [ -f "$missed" ] && [ -f "$caught" ] || { echo "mutants: no results in $out" >&2; exit 1; }
    [ -s "$caught" ] || { echo "mutants: not one mutant was caught: the tests did not run" >&2; exit 1; }
    unexplained=$(grep -vxF -f <(listed) "$missed" || true)
    for f in caught missed unviable timeout; do
        printf '%s: %s\n' "$f" "$( (cat "$out/mutants.out/$f.txt" 2>/dev/null || true) | wc -l)"
    done
    echo "equivalent (listed): $(listed | wc -l)"
    if [ -n "$unexplained" ]; then
        echo "mutants: survivors neither caught nor listed in $list (each: the mutant, then the line it changes):" >&2
        while IFS= read -r m; do
            f=${m%%:*} rest=${m#*:} l=${rest%%:*}
            printf '%s # `%s`\n' "$m" "$(sed -n "${l}p" "$f" | sed 's/^ *//')" >&2
        done <<<"$unexplained"
        exit 1
    fi
    # What this run covered, so that `make test` runs it again when any of it changes (commit the file).
    covered >mutants/covered.sha256
    ;;
*)
    echo "usage: mutants.sh run|if-changed" >&2
    exit 2
    ;;
esac
