#!/usr/bin/env bash
# make test-breaks: each guarantee turned off in turn (BLOCKJOBINFO_TEST_BREAK, debug builds only) must turn
# the tests that guard it red, for the right reason, on every stack under test (scripts/stacks.sh names). Each
# guard runs twice: first as it is, where it must pass (a guard that fails anyway proves nothing; in `make test`
# that run is the gate's own, from the same binary, when its lane's log says it passed), then with its rule off,
# where it must fail with the rule's own assertion, matched in its output (a compile error, a lock clash, a
# missing root or a timeout is not a bite). The stacks run side by side, as the gate's lanes do.
#
#   window    the offset == len rule (cur == end - 1 until QEMU says ready)
#   zero      0/0 read as 0/1
#   fallback  the drop-in's chosen source (silently replaced by libvirt's own answer)
#   catch     the catch at the C boundary (a panic forced with BLOCKJOBINFO_TEST_PANIC)
#   ending    QEMU's ready event decides a wait for ready (the later listing of a concluded job does not)
#   own       a job's own devices tell its pivot (not another job's)
#   series    the exporter's series keyed by their exact label values (not by the FNV-1a hash of the values joined)
#   lastend   a ready copy's good end is unknown to bji_last_ending unless a wait told it (not QEMU's word)
#   standby   a ready job paused (`standby`) is ready to a wait, `list` and `metrics`
#   memory    (not a rule: a heap overflow made in the Rust code) AddressSanitizer sees the Rust code's accesses
#
# Seams for its own test (tests/gate_breaks.rs): BJI_LANES_OUT (where the lanes' logs are read and its own
# written, as scripts/lanes.sh; never set by the gate) and CARGO (a stand-in cargo there; the Makefile's cargo
# in the gate).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${BJI_LANES_OUT:-target}
logs=$out/test-breaks
rm -rf "$logs"
mkdir -p "$logs"

# The guards: rule, test binary, test (`@::` is each stack's prefix; a name without it runs once), then the
# text its failure must show with the rule off.
guards() {
    cat <<'EOF'
window	real_qemu	@::sampling_a_whole_mirror_never_reports_done_early	cur == end before ready
window	libvirt_stack	@::copy_job_agrees_with_libvirt_in_every_phase_for_qmp_and_native	preloaded with source qmp disagrees with libvirt's own
window	dropin_clients	@::nova_live_snapshot_aborts_only_when_ready_and_the_copy_is_equal	"qemu_ready_when_complete": false
window	native_old_libvirt	@::native_corrects_a_libvirt_that_does_not	native through the old libvirt
zero	properties	never_done_before_ready	done before ready
zero	real_qemu	@::a_just_started_mirror_is_never_reported_done	QEMU's 0/0 before the job is sized
zero	native_old_libvirt	@::native_reads_an_old_libvirts_0_0_by_the_mirrors_state	native through the old libvirt at 0/0
fallback	libvirt_stack	@::copy_job_agrees_with_libvirt_in_every_phase_for_qmp_and_native	never answered itself
fallback	dropin_clients	@::errors_and_empty_answers_are_libvirts_own	never answered itself
catch	panic_boundary	a_panic_in_every_export_is_an_error_and_the_program_goes_on	a panic crossed the C boundary
catch	panic_boundary	@::a_panic_in_the_drop_in_is_libvirts_answer	panic in a function that cannot unwind
ending	wait_endings	a_copy_pivoted_the_moment_it_is_ready_has_reached_ready	a mirror pivoted on ready, told otherwise
ending	wait_endings	an_active_commit_completed_the_moment_it_is_ready_has_reached_ready	a commit pivoted on ready, told otherwise
own	wait_endings	two_copies_ending_back_to_back_each_get_their_own_verdict	took another job's ending
own	libvirt_endings	@::every_ending_is_told_as_libvirt_tells_it	vda, 300 ms apart: Reached
series	exporter_series_identity	@::series_that_join_alike_keep_their_own_numbers	has no series of its own
series	exporter_series_identity	@::domains_whose_labels_hash_alike_keep_their_own_numbers	has no series of its own
lastend	qsd_last_ending	@::a_ready_copys_end_is_unknown_unless_a_wait_told_it	a ready copy's end told without a wait
standby	standby	@::a_paused_ready_job_is_ready_everywhere	a wait for ready on a paused ready job was not reached
memory	c_shared_source	@::close_under_eight_threads_with_address_sanitizer_in_the_rust_code_too	AddressSanitizer: heap-buffer-overflow
memory	c_shared_source	@::a_forked_child_closes_at_once_under_address_sanitizer_in_the_rust_code_too	child exited=1 status=23 signalled=0
EOF
}

# Whether TEST of BIN passed in the gate's lane LANE, run from the very binary built now (its log newer than
# the binary, the binary's section saying ok): then that was its run without the break, and it is not repeated.
passed_in_lane() {
    local lane=$1 bin=$2 test=$3 exe log
    exe=$(ls -t "${CARGO_TARGET_DIR:-target}"/debug/deps/"$bin"-* 2>/dev/null | grep -v '\.d$' | head -n 1)
    log=$out/lanes/$lane.log
    [ -n "$exe" ] && [ -f "$log" ] && [ "$log" -nt "$exe" ] || return 1
    awk -v run="     Running $(basename "$exe")" -v want="test $test ... ok" '
        $0 == run { inside = 1; next }
        /^     Running / { inside = 0 }
        inside && $0 == want { found = 1 }
        END { exit !found }' "$log"
}

# One guard: RULE BIN TEST PATTERN LANE; one line in $logs/results, "ok ..." or "BAD ...". Each run is bounded
# as the lanes bound a binary (20 minutes, then killed and named): a break that hangs a guard fails it, named.
one() {
    local rule=$1 bin=$2 test=$3 pattern=$4 lane=$5 base=$logs/$rule-$2-${3//::/-} rc
    if passed_in_lane "$lane" "$bin" "$test"; then
        echo "passed in the gate's lane $lane, from this build" >"$base.clean.log"
    else
        # --show-output: a passing test's own output is kept, so that the pattern check below sees it.
        timeout -k 30 "${BJI_GUARD_TIMEOUT:-1200}" ${CARGO:-cargo} test -q --test "$bin" -- --exact "$test" \
            --show-output >"$base.clean.log" 2>&1
        rc=$?
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            echo "BAD $rule: $bin $test timed out with its rule on (log: $base.clean.log)"
            return
        elif [ "$rc" -ne 0 ]; then
            echo "BAD $rule: $bin $test fails with its rule on, so its failure proves nothing (log: $base.clean.log)"
            return
        fi
        # The pattern is the rule's own assertion: a guard that says it while passing proves nothing by it.
        if grep -qF -- "$pattern" "$base.clean.log"; then
            echo "BAD $rule: $bin $test says '$pattern' with its rule on, so the pattern proves nothing" \
                "(log: $base.clean.log)"
            return
        fi
    fi
    BLOCKJOBINFO_TEST_BREAK="$rule" timeout -k 30 "${BJI_GUARD_TIMEOUT:-1200}" ${CARGO:-cargo} test -q \
        --test "$bin" -- --exact "$test" >"$base.broken.log" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ]; then
        echo "BAD $rule: $bin $test passes with its rule off: it guards nothing (log: $base.broken.log)"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "BAD $rule: $bin $test timed out with its rule off, which is not a bite (log: $base.broken.log)"
    elif ! grep -qF -- "$pattern" "$base.broken.log"; then
        echo "BAD $rule: $bin $test failed with its rule off, but not on the rule's assertion ('$pattern' is not in" \
            "$base.broken.log)"
    else
        echo "ok $rule: $bin $test passes as it is and fails with its rule off on '$pattern'"
    fi
}

# Built once, before the lanes start (cargo's build lock would otherwise serialise them on the first build).
${CARGO:-cargo} test --no-run -q >"$logs/build.log" 2>&1 || { cat "$logs/build.log"; exit 1; }

# A lane per stack for the stack's guards, and one for the guards of no stack.
lane() {
    local stack=$1 rule bin test pattern
    while IFS=$'\t' read -r rule bin test pattern; do
        case $test in
        @::*) [ "$stack" = none ] && continue; test=$stack::${test#@::} ;;
        *) [ "$stack" = none ] || continue ;;
        esac
        one "$rule" "$bin" "$test" "$pattern" "$([ "$stack" = none ] && echo common || echo "$stack")"
    done < <(guards) >"$logs/lane-$stack"
}
stacks=$(scripts/stacks.sh names) || exit 1
[ -n "$stacks" ] || { echo "test-breaks: no stack selected" >&2; exit 1; }
pids=()
for s in $stacks none; do
    lane "$s" &
    pids+=($!)
done
wait "${pids[@]}"
cat "$logs"/lane-*
good=$(cat "$logs"/lane-* | grep -c '^ok ')
bad=$(cat "$logs"/lane-* | grep -c '^BAD ')
# Every guard on every stack, each said once: a lane that died or skipped one is not green.
per_stack=$(guards | grep -c $'\t@::')
once=$(guards | grep -vc $'\t@::')
want=$((per_stack * $(echo $stacks | wc -w) + once))
# How long it took, for the docs (scripts/stacks.sh report writes it into docs/testing.md).
mkdir -p "$out/stacks"
echo "\`make test-breaks\` took ${SECONDS} s ($want guards on $(echo $stacks | wc -w) stacks, $bad did not bite), on" \
    "$(date -u +%F) with $(nproc) cores" >"$out/stacks/test-breaks-took"
if [ "$bad" -gt 0 ] || [ "$good" -ne "$want" ]; then
    echo "test-breaks: $good of the $want guards bit for the right reason ($bad did not)" >&2
    exit 1
fi
echo "test-breaks: all $good guards pass as they are and fail on their own assertion with their rule off"
