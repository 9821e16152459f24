# Sourced by gate.sh and bench.sh: marks every process started from here on (BJI_GATE, which
# `stacks.sh stop/check` find stragglers by) and, on exit, Ctrl-C or TERM, stops whatever the tests left
# running, then fails if any process or mount is left.
export BJI_GATE=$1-$$-$(date +%s)
bji_finish() {
    local rc=$?
    trap - EXIT INT TERM
    scripts/stacks.sh stop
    scripts/stacks.sh check || rc=1
    exit "$rc"
}
trap bji_finish EXIT
trap 'exit 130' INT TERM
