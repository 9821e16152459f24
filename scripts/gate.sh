#!/usr/bin/env bash
# The real part of `make test`: waits for the stacks' roots (`make test` starts preparing them before it
# builds), then runs the suite and the benchmark's quick pass (scripts/lanes.sh: a lane per stack, side by side)
# with the checkout readable by root alone, then `make test-breaks` the same way, stops whatever the tests left
# running (also when interrupted), and fails if anything was left behind.
#
#   BJI_STACKS=deb12,deb14   only these stacks of tests/stacks.conf (quick local work); default: all of them
#   BJI_STACKS_REQUIRED=...  stacks that must be among them (CI names every one): a missing one fails the gate
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$(pwd -P)

# The lanes' test seams (tests/gate_lanes.rs) never come from the environment of a real run.
unset BJI_BENCH BJI_LANES_OUT
selected=$(scripts/stacks.sh names)
# The stacks a run must cover (CI names them all): one not selected fails here, before anything runs.
for need in ${BJI_STACKS_REQUIRED:+${BJI_STACKS_REQUIRED//,/ }}; do
    echo " $selected " | tr '\n' ' ' | grep -q " $need " ||
        { echo "== the stack $need must be tested (BJI_STACKS_REQUIRED) but is not selected: ${selected//$'\n'/ }" >&2; exit 1; }
done

. scripts/guard.sh gate

# A root that could not be made was reported in one line; its lane fails at once with that line (lanes.sh).
scripts/stacks.sh prepare-wait || echo "== some stacks could not be prepared: their lanes fail" >&2
# The facts the README shows are this run's alone (a stack not run reads "(not run)"), but for the figures of the
# last `make soak`, which the gate does not repeat.
[ -d target/stacks ] && find target/stacks -type f ! -name soak -delete
echo "== stacks under test: $(echo $selected)"
scripts/stacks.sh versions

# The suite runs where unprivileged users cannot read the checkout, as when it is cloned under root's home or
# into a `mktemp -d` directory: whatever the test users' processes need must be copied out on purpose. When the
# checkout is readable by others, a private mount namespace covers its parent with a root-only tmpfs and binds
# the checkout back at the same path. Nothing of it is seen outside, and it ends with the run.
run_private() {
    local parent
    parent=$(dirname "$checkout")
    if [ "$(id -u)" != 0 ] || ! runuser -u nobody -- test -r "$checkout/Cargo.toml"; then
        "$@"
        return
    fi
    case $parent in
    / | /tmp | /var/tmp | /var | /var/cache | /run | /home | /usr | /opt | /srv | /mnt)
        echo "note: $checkout is readable by other users and $parent is shared: the suite runs from it as is" >&2
        "$@"
        return
        ;;
    esac
    unshare --mount --propagation private -- /bin/sh -c '
        set -e
        checkout=$1 parent=$2; shift 2
        keep=$(mktemp -d /run/bji-checkout.XXXXXX)
        mount --bind "$checkout" "$keep"
        mount -t tmpfs -o mode=0700 bji-private "$parent"
        mkdir "$checkout"
        mount --bind "$keep" "$checkout"
        umount -l "$keep" 2>/dev/null || true
        rmdir "$keep" 2>/dev/null || true
        if runuser -u nobody -- test -r "$checkout/Cargo.toml"; then
            echo "the checkout is still readable by others" >&2; exit 1
        fi
        echo "== $checkout is readable by root alone for this run"
        cd "$checkout"
        exec "$@"' sh "$checkout" "$parent" "$@"
}

run_private scripts/lanes.sh

# Each rule turned off in turn must turn its guards red for the right reason: from the same private view of the
# checkout as the lanes (their lane logs stand for the guards' clean runs), and under this gate's watch, so
# whatever a guard leaves running is stopped and fails the gate too. The report follows either way.
run_private scripts/test-breaks.sh && rc=0 || rc=$?
scripts/stacks.sh report
exit "$rc"
