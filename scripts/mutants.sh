#!/usr/bin/env bash
# Mutation testing of the pure layers (the rules, parsing, the XML, framing, and the wait's verdict on a listed
# job) with the fast tests, which need no QEMU: every mutant must be caught, or listed in
# mutants/equivalent.txt with why it changes nothing.
#
#   mutants.sh run     (make mutants) runs cargo-mutants; fails on a survivor that is not listed
#   mutants.sh check   (make test) fails when a listed mutant no longer exists (its line changed): the list is
#                      then stale, and `make mutants` says what survives now
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: mutants.sh run|check}
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
check)
    all=$(cargo mutants --list "${filters[@]}")
    stale=0
    while IFS= read -r m; do
        if ! grep -qxF -- "$m" <<<"$all"; then
            echo "mutants: $list lists a mutant the code no longer has: $m" >&2
            stale=1
        fi
    done < <(listed)
    [ "$stale" = 0 ] || { echo "mutants: run \`make mutants\` and update $list" >&2; exit 1; }
    echo "mutants: the $(listed | wc -l) listed equivalent mutants all exist"
    ;;
run)
    out=target/mutants
    mkdir -p "$out"
    # The library's unit tests and the property tests: fast, and no QEMU.
    cargo mutants "${filters[@]}" --output "$out" --no-shuffle -j 2 -- --lib --test properties || true
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
    echo "usage: mutants.sh run|check" >&2
    exit 2
    ;;
esac
