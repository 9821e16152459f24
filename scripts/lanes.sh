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
    local name=$1 bench=$2 rc=0 bin why
    shift 2
    {
        # A stack whose root is stale or was never made fails its lane at once, naming the cause.
        if [ "$name" != common ] && ! why=$(scripts/stacks.sh fresh "$name"); then
            echo "== lane $name: $why"
            echo 1 >"target/lanes/$name.rc.tmp"
            exit 0
        fi
        # What the lane must run: every test its filters select, listed by each binary itself.
        for bin in $binaries; do
            "$bin" --list "$@" 2>/dev/null | sed -n "s|^\(.*\): test\$|$(basename "$bin") \1|p"
        done >"target/lanes/$name.expected"
        for bin in $binaries; do
            echo "     Running $(basename "$bin")"
            "$bin" "$@" || rc=1
        done
        echo "     Running the benchmark's quick pass ($bench)"
        # shellcheck disable=SC2086 # the arguments are words
        ./target/debug/examples/bench --quick $bench >/dev/null || { rc=1; echo "the benchmark's quick pass FAILED"; }
    } >"target/lanes/$name.log" 2>&1
    [ -f "target/lanes/$name.rc.tmp" ] && rc=1 && rm -f "target/lanes/$name.rc.tmp"
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
        echo "$n $(( $(date +%s) - started ))" >>target/lanes/took
        echo "== lane $n ($(( $(date +%s) - started )) s)"
        cat "target/lanes/$n.log"
        [ "$(cat "target/lanes/$n.rc")" = 0 ] || { rc=1; echo "== lane $n FAILED"; }
        left=$(echo " $left " | sed "s/ $n / /; s/^ *//; s/ *$//")
    done
    [ -n "$left" ] && sleep 1
done
wait "${pids[@]}"
# How long the lanes took, for the docs (scripts/stacks.sh report writes it where they quote it).
mkdir -p target/stacks
sort -k2 -n target/lanes/took | tail -n 1 | {
    read -r lane secs
    echo "the lanes took $secs s (the longest, $lane), on $(date -u +%Y-%m-%d) with $(nproc) cores"
} >target/stacks/lanes-took

# One summary: every lane's totals, then every failure by name. A lane passes only if every test its filters
# select ran and passed (each binary's own list), at least as many as tests/lanes.floor says (an empty list, or
# a stack whose tests vanished, is not green), and a stack's lane recorded the versions it tested.
/usr/bin/python3 - $selected common <<'PY' || rc=1
import os, re, sys
floor = {}
for line in open("tests/lanes.floor"):
    if line.strip() and not line.startswith("#"):
        kind, n = line.split()
        floor[kind] = int(n)
total = {"passed": 0, "failed": 0, "ignored": 0}
failed, bad = [], []
for lane in sys.argv[1:]:
    text = open(f"target/lanes/{lane}.log", errors="replace").read()
    for m in re.finditer(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", text):
        for k, v in zip(("passed", "failed", "ignored"), m.groups()):
            total[k] += int(v)
    failed += [f"{lane}: {name}" for name in re.findall(r"^test (\S+) \.\.\. FAILED$", text, re.M)]
    # Each binary's section of the log: what it said of each of its tests.
    ok, ignored = set(), set()
    for part in re.split(r"^     Running ", text, flags=re.M)[1:]:
        binary = part.split("\n", 1)[0].strip()
        ok |= {(binary, t) for t in re.findall(r"^test (\S+) \.\.\. ok$", part, re.M)}
        ignored |= {(binary, t) for t in re.findall(r"^test (\S+) \.\.\. ignored", part, re.M)}
    try:
        expected = [tuple(l.split(" ", 1)) for l in open(f"target/lanes/{lane}.expected").read().splitlines()]
    except FileNotFoundError:
        expected = []
    missing = [f"{b} {t}" for b, t in expected if (b, t) not in ok and (b, t) not in ignored]
    passed = sum(1 for e in expected if e in ok)
    need = floor["common" if lane == "common" else "stack"]
    if missing:
        bad.append(f"lane {lane}: {len(missing)} of its {len(expected)} tests did not run or pass: " + ", ".join(missing[:10]))
    if passed < need:
        bad.append(f"lane {lane}: {passed} tests passed, fewer than its floor of {need} (tests/lanes.floor)")
    if lane != "common":
        facts = {}
        for k in ("qemu", "qemu-system", "libvirt", "python-libvirt"):
            p = f"target/stacks/{lane}/{k}"
            facts[k] = open(p).read().strip() if os.path.exists(p) else None
        if None in facts.values():
            bad.append(f"lane {lane}: no versions recorded ({', '.join(k for k, v in facts.items() if v is None)}): its stack tests did not run")
        else:
            print(f"== {lane}: {passed} passed on qemu-storage-daemon {facts['qemu']}; QEMU {facts['qemu-system']}; "
                  f"libvirt {facts['libvirt']}; python3-libvirt {facts['python-libvirt']}")
    else:
        print(f"== common: {passed} passed")
print(f"== all lanes: {total['passed']} passed, {total['failed']} failed, {total['ignored']} ignored")
for f in failed:
    print(f"   FAILED {f}")
for b in bad:
    print(f"   NOT GREEN: {b}")
sys.exit(1 if failed or bad else 0)
PY
exit "$rc"
