#!/usr/bin/env bash
# The ABI of libblockjobinfo.so against the committed baseline, abi/libblockjobinfo.abi (libabigail).
#
#   abi.sh check [SO]    (make test) fails on an incompatible change: an export or its version removed, or a
#                        change to a function's type or to a type the API passes (virDomainBlockJobInfo); a
#                        compatible addition passes, with the report and how to accept it
#   abi.sh update [SO]   (make abi) writes the baseline from SO
#
# ABI_BASELINE names another baseline (for the tests). SO defaults to target/debug/libblockjobinfo.so: the debug build carries the DWARF type information abidw
# reads. bji_source is opaque to C (only pointers to it cross), so its Rust insides are not ABI
# (abi/suppressions).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: abi.sh check|update [SO]}
so=${2:-target/debug/libblockjobinfo.so}
baseline=${ABI_BASELINE:-abi/libblockjobinfo.abi}
# Every type the exports use, with its layout (the library exports nothing else: libblockjobinfo.map).
dump() {
    abidw --no-show-locs --no-corpus-path "$1"
}
case $mode in
update)
    dump "$so" > "$baseline.tmp"
    mv "$baseline.tmp" "$baseline"
    echo "abi: $baseline written from $so"
    ;;
check)
    current=$(mktemp)
    trap 'rm -f "$current"' EXIT
    dump "$so" > "$current"
    rc=0
    report=$(abidiff --suppressions abi/suppressions --no-show-locs "$baseline" "$current") || rc=$?
    if [ "$rc" = 0 ]; then
        echo "abi: $so matches $baseline"
        exit 0
    fi
    printf '%s\n' "$report"
    # abidiff: bit 1 error, 2 usage, 4 an ABI change, 8 an incompatible one. Only additions are compatible.
    if (( rc & 3 )); then
        echo "abi: abidiff failed (exit $rc)" >&2
        exit 1
    fi
    # The summaries ("Functions changes summary: 0 Removed, 1 Changed, 0 Added function", and the same for
    # variables and for symbols without debug information): anything removed or changed is incompatible.
    broken=$(grep -E 'summary:' <<<"$report" | grep -oE '[0-9]+ (Removed|Changed)' | awk '$1 > 0' || true)
    if (( rc & 8 )) || [ -n "$broken" ]; then
        echo "abi: INCOMPATIBLE change to $so against $baseline (above)" >&2
        exit 1
    fi
    echo "abi: compatible additions only (above); accept them on purpose with 'make abi'"
    ;;
*)
    echo "usage: abi.sh check|update [SO]" >&2
    exit 2
    ;;
esac
