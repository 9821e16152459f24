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

# Where the lanes' logs and the run's facts go (BJI_LANES_OUT: a test of this script runs it apart).
out=${BJI_LANES_OUT:-target}
lanes=$out/lanes
mkdir -p "$lanes"
rm -f "$lanes"/*

# lane NAME BENCH-ARGS ARGS...: every binary with ARGS, in order, then the benchmark's quick pass with
# BENCH-ARGS (it keeps `make bench` working; on the lane's own stack, whose users no other lane touches); the
# lane's status is 1 if any failed.
lane() {
    local name=$1 bench=$2 rc=0 bin why
    shift 2
    # A stack whose root is stale or was never made fails its lane at once, naming the cause.
    if [ "$name" != common ] && ! why=$(scripts/stacks.sh fresh "$name" 2>&1); then
        echo "== lane $name: ${why:-its root could not be checked}" >"$lanes/$name.log"
        echo 1 >"$lanes/$name.rc"
        return
    fi
    # What the lane must run: every test its filters select, listed by each binary itself.
    for bin in $binaries; do
        "$bin" --list "$@" 2>/dev/null | sed -n "s|^\(.*\): test\$|$(basename "$bin") \1|p"
    done >"$lanes/$name.expected"
    {
        for bin in $binaries; do
            echo "     Running $(basename "$bin")"
            # A binary that hangs is ended, and named: the lane goes on to say what it saw.
            timeout -k 30 "${BJI_BINARY_TIMEOUT:-1200}" "$bin" "$@" || {
                st=$?
                rc=1
                [ "$st" = 124 ] || [ "$st" = 137 ] &&
                    echo "== $(basename "$bin") did not end within ${BJI_BINARY_TIMEOUT:-1200} s: killed"
            }
        done
        echo "     Running the benchmark's quick pass ($bench)"
        # shellcheck disable=SC2086 # the arguments are words
        ${BJI_BENCH:-./target/debug/examples/bench} --quick $bench >/dev/null ||
            { rc=1; echo "the benchmark's quick pass FAILED"; }
    } >"$lanes/$name.log" 2>&1
    echo "$rc" >"$lanes/$name.rc"
}

started=$(date +%s)
declare -A pid_of
for n in $selected; do
    lane "$n" "--stacks $n --only qmp,wait,libvirt,events,list" "$n::" "$@" &
    pid_of[$n]=$!
done
lane common "--stacks none --only cpu" "${common[@]}" "$@" &
pid_of[common]=$!

# Each lane's output whole, in the order they end. A lane that died without saying how it ended is a failure,
# never a wait without end.
rc=0
left=$(echo $selected common)
while [ -n "$left" ]; do
    for n in $left; do
        if [ ! -f "$lanes/$n.rc" ]; then
            kill -0 "${pid_of[$n]}" 2>/dev/null && continue
            # Ended: its status file may have been written just now.
            if [ ! -f "$lanes/$n.rc" ]; then
                echo 1 >"$lanes/$n.rc"
                echo "== lane $n ended without a status" >>"$lanes/$n.log"
            fi
        fi
        echo "$n $(( $(date +%s) - started ))" >>"$lanes/took"
        echo "== lane $n ($(( $(date +%s) - started )) s)"
        cat "$lanes/$n.log"
        [ "$(cat "$lanes/$n.rc")" = 0 ] || { rc=1; echo "== lane $n FAILED"; }
        left=$(echo " $left " | sed "s/ $n / /; s/^ *//; s/ *$//")
    done
    [ -n "$left" ] && sleep 1
done
wait "${pid_of[@]}"
# How long the lanes took, for the docs (scripts/stacks.sh report writes it where they quote it).
mkdir -p "$out/stacks"
sort -k2 -n "$lanes/took" | tail -n 1 | {
    read -r lane secs
    echo "the lanes took $secs s (the longest, $lane), on $(date -u +%Y-%m-%d) with $(nproc) cores"
} >"$out/stacks/lanes-took"

# One summary: every lane's totals, then every failure by name. A lane passes only if every test its filters
# select ran and passed (each binary's own list), at least as many as tests/lanes.floor says (an empty list, or
# a stack whose tests vanished, is not green), and a stack's lane recorded the versions it tested.
LANES=$lanes FACTS=$out/stacks /usr/bin/python3 - $selected common <<'PY' || rc=1
import os, re, sys
lanes, facts_dir = os.environ["LANES"], os.environ["FACTS"]
floor = {}
for line in open("tests/lanes.floor"):
    if line.strip() and not line.startswith("#"):
        kind, n = line.split()
        floor[kind] = int(n)
total = {"passed": 0, "failed": 0, "ignored": 0}
failed, bad = [], []
for lane in sys.argv[1:]:
    text = open(f"{lanes}/{lane}.log", errors="replace").read()
    for m in re.finditer(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", text):
        for k, v in zip(("passed", "failed", "ignored"), m.groups()):
            total[k] += int(v)
    failed += [f"{lane}: {name}" for name in re.findall(r"^test (\S+) \.\.\. FAILED$", text, re.M)]
    # Each binary's section of the log, and its closing line: every test its list names must have run (passed
    # or ignored), none failed. Counted from that line, which libtest writes whole (a test's line may be split
    # by a child's output); an ignored test does not count towards the floor.
    results = {}
    for part in re.split(r"^     Running ", text, flags=re.M)[1:]:
        binary = part.split("\n", 1)[0].strip()
        # The binary's own closing line is its last one (a child's output may hold others).
        ms = re.findall(r"^test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", part, re.M)
        results[binary] = tuple(map(int, ms[-1])) if ms else None
    try:
        expected = [tuple(l.split(" ", 1)) for l in open(f"{lanes}/{lane}.expected").read().splitlines()]
    except FileNotFoundError:
        expected = []
    listed = {}
    for b, _ in expected:
        listed[b] = listed.get(b, 0) + 1
    missing, passed = [], 0
    for b, n in sorted(listed.items()):
        r = results.get(b)
        if r is None:
            missing.append(f"{b}: no closing line (it did not run, or died)")
        elif r[0] + r[2] != n or r[1] != 0:
            missing.append(f"{b}: {r[0]} passed, {r[1]} failed, {r[2]} ignored of the {n} it lists")
        else:
            passed += r[0]
    need = floor.get(lane, floor.get("common" if lane == "common" else "stack", 1))
    if missing:
        bad.append(f"lane {lane}: not every listed test ran and passed: " + "; ".join(missing[:10]))
    if passed < need:
        bad.append(f"lane {lane}: {passed} tests passed, fewer than its floor of {need} (tests/lanes.floor)")
    if lane != "common":
        facts = {}
        for k in ("qemu", "qemu-system", "libvirt", "python-libvirt"):
            p = f"{facts_dir}/{lane}/{k}"
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
