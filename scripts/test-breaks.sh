#!/usr/bin/env bash
# make test-breaks: each guarantee turned off in turn (BLOCKJOBINFO_TEST_BREAK, debug builds only) must turn
# the tests that guard it red: the real-QEMU, drop-in and Nova-flow tests, on one stack (BJI_BREAK_STACK,
# default deb12). Passes only if every one of them fails with its rule off.
#
#   window    the offset == len rule (cur == end - 1 until QEMU says ready)
#   zero      0/0 read as 0/1
#   fallback  the drop-in's chosen source (silently replaced by libvirt's own answer)
#   catch     the catch at the C boundary (a panic forced with BLOCKJOBINFO_TEST_PANIC)
set -uo pipefail
cd "$(dirname "$0")/.."
stack=${BJI_BREAK_STACK:-deb12}
logs=target/test-breaks
mkdir -p "$logs"
failed_as_they_must=0
passed_anyway=()
# rule, then a test binary and the one test in it (exact name).
guard() {
    local rule=$1 bin=$2 test=$3
    local log=$logs/$rule-$bin-${test//::/-}.log
    if BLOCKJOBINFO_TEST_BREAK="$rule" ${CARGO:-cargo} test -q --test "$bin" -- --exact "$test" >"$log" 2>&1; then
        passed_anyway+=("$rule: $bin $test (log: $log)")
    else
        echo "test-breaks: $rule off: $bin $test fails, as it must"
        failed_as_they_must=$((failed_as_they_must + 1))
    fi
}
guard window real_qemu "$stack::sampling_a_whole_mirror_never_reports_done_early"
guard window libvirt_stack "$stack::copy_job_agrees_with_libvirt_in_every_phase_for_qmp_and_native"
guard window dropin_clients "$stack::nova_live_snapshot_aborts_only_when_ready_and_the_copy_is_equal"
guard zero properties "never_done_before_ready"
guard zero real_qemu "$stack::a_just_started_mirror_is_never_reported_done"
guard fallback libvirt_stack "$stack::copy_job_agrees_with_libvirt_in_every_phase_for_qmp_and_native"
guard fallback dropin_clients "$stack::errors_and_empty_answers_are_libvirts_own"
guard catch panic_boundary "a_panic_in_every_export_is_an_error_and_the_program_goes_on"
guard catch panic_boundary "$stack::a_panic_in_the_drop_in_is_libvirts_answer"
if [ ${#passed_anyway[@]} -gt 0 ]; then
    printf 'test-breaks: passed with its rule off (it guards nothing): %s\n' "${passed_anyway[@]}" >&2
    exit 1
fi
echo "test-breaks: all $failed_as_they_must guard tests fail with their rule off"
