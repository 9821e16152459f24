#!/usr/bin/env bash
# Mutation testing of the pure layers (the rules, parsing, the XML, framing, and the wait's verdict on a listed
# job) with the fast tests, which need no QEMU: every mutant must be caught, or listed in
# mutants/equivalent.txt with why it changes nothing.
#
#   mutants.sh run     (make mutants) runs cargo-mutants; fails on a survivor that is not listed
# (tests/mutants_list.rs, in `make test`, fails when a listed mutant's line has changed: the list is then stale.)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: mutants.sh run}
list=mutants/equivalent.txt
filters=(
    -f src/translate.rs -f src/jobs.rs -f src/libvirt/native.rs -f src/libvirt/xml.rs -f src/qmp/framing.rs
    -f src/wait.rs
    --re '^src/(translate|jobs|libvirt/native|libvirt/xml|qmp/framing)\.rs:|^src/wait\.rs:.*\bjudge\b'
)
if ! cargo mutants --version >/dev/null 2>&1; then
    echo "installing cargo-mutants (crates.io)" >&2
    cargo install cargo-mutants --locked
fi
# The listed mutants: the name before " # why".
listed() { grep -v '^#' "$list" | grep -v '^$' | sed 's/ # .*//'; }
case $mode in
run)
    out=target/mutants
    mkdir -p "$out"
    # The library alone (not the tool's dependencies), without debug info, and its unit tests: fast, no QEMU.
    CARGO_PROFILE_DEV_DEBUG=0 CARGO_PROFILE_TEST_DEBUG=0 \
        cargo mutants "${filters[@]}" --output "$out" --no-shuffle -j 2 \
        --cargo-arg=--no-default-features --cargo-arg=--lib || true
    missed=$out/mutants.out/missed.txt
    [ -f "$missed" ] || { echo "mutants: no results in $out" >&2; exit 1; }
    unexplained=$(grep -vxF -f <(listed) "$missed" || true)
    for f in caught missed unviable timeout; do
        printf '%s: %s\n' "$f" "$( (cat "$out/mutants.out/$f.txt" 2>/dev/null || true) | wc -l)"
    done
    echo "equivalent (listed): $(listed | wc -l)"
    if [ -n "$unexplained" ]; then
        echo "mutants: survivors neither caught nor listed in $list:" >&2
        echo "$unexplained" >&2
        exit 1
    fi
    ;;
*)
    echo "usage: mutants.sh run" >&2
    exit 2
    ;;
esac
