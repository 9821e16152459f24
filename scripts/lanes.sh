#!/usr/bin/env bash
# The suite in lanes side by side (what scripts/gate.sh runs): one lane per stack under test, running the tests
# named `<stack>::`, and one for the tests of no stack. The stacks share nothing a test may not share: each has
# its own users, session and system libvirtd, root and recorded facts, and what the machine has only one of (a
# fixed port, the cores for thousands of connections, a booted container) is taken with a lock
# (tests/common: host_lock). Each lane runs the test binaries one after another, as cargo would; its output goes to
# target/lanes/<lane>.log and is printed whole once the lane ends. Fails if any test failed.
#
#   lanes.sh [--skip FILTER ...]    extra arguments for every test binary
set -uo pipefail
cd "$(dirname "$0")/.."

# Built once, then run straight from the build: the executables, by name (cargo reports them in the order they
# finished compiling, which changes from build to build: a failure must be repeatable in the same order).
binaries=$(${CARGO:-cargo} test --no-run --message-format=json 2>/dev/null | /usr/bin/python3 -c '
import json, os, sys
found = []
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        found.append(m["executable"])
for exe in sorted(found, key=os.path.basename):
    print(exe)
') || { ${CARGO:-cargo} test --no-run; exit 1; }

all=$(BJI_STACKS= scripts/stacks.sh names)
selected=$(scripts/stacks.sh names)
common=()
for n in $all; do common+=(--skip "$n::"); done

mkdir -p target/lanes
rm -f target/lanes/*

# lane NAME BENCH-ARGS ARGS...: every binary with ARGS, in order, then the benchmark's quick pass with
# BENCH-ARGS (it keeps `make bench` working; on the lane's own stack, whose users no other lane touches); the
# lane's status is 1 if any failed.
lane() {
    local name=$1 bench=$2 rc=0 bin
    shift 2
    {
        for bin in $binaries; do
            echo "     Running $(basename "$bin")"
            "$bin" "$@" || rc=1
        done
        echo "     Running the benchmark's quick pass ($bench)"
        # shellcheck disable=SC2086 # the arguments are words
        ./target/debug/examples/bench --quick $bench >/dev/null || { rc=1; echo "the benchmark's quick pass FAILED"; }
    } >"target/lanes/$name.log" 2>&1
    echo "$rc" >"target/lanes/$name.rc"
}

started=$(date +%s)
pids=()
for n in $selected; do
    lane "$n" "--stacks $n --only qmp,wait,libvirt,events,list" "$n::" "$@" &
    pids+=($!)
done
lane common "--stacks none --only cpu" "${common[@]}" "$@" &
pids+=($!)

# Each lane's output whole, in the order they end.
rc=0
left=$(echo $selected common)
while [ -n "$left" ]; do
    for n in $left; do
        [ -f "target/lanes/$n.rc" ] || continue
        echo "== lane $n ($(( $(date +%s) - started )) s)"
        cat "target/lanes/$n.log"
        [ "$(cat "target/lanes/$n.rc")" = 0 ] || { rc=1; echo "== lane $n FAILED"; }
        left=$(echo " $left " | sed "s/ $n / /; s/^ *//; s/ *$//")
    done
    [ -n "$left" ] && sleep 1
done
wait "${pids[@]}"

# One summary: every lane's totals, then every failure by name.
/usr/bin/python3 - $selected common <<'PY'
import re, sys
total = {"passed": 0, "failed": 0, "ignored": 0}
failed = []
for lane in sys.argv[1:]:
    text = open(f"target/lanes/{lane}.log", errors="replace").read()
    for m in re.finditer(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", text):
        for k, v in zip(("passed", "failed", "ignored"), m.groups()):
            total[k] += int(v)
    failed += [f"{lane}: {name}" for name in re.findall(r"^test (\S+) \.\.\. FAILED$", text, re.M)]
print(f"== all lanes: {total['passed']} passed, {total['failed']} failed, {total['ignored']} ignored")
for f in failed:
    print(f"   FAILED {f}")
PY
exit "$rc"
