#!/usr/bin/env bash
# The test stacks of tests/stacks.conf: the host's own Debian packages, and Debian roots made with mmdebstrap
# whose programs the tests run through chroot (tests/common/stack.rs).
#
#   stacks.sh names             the stacks this run covers: BJI_STACKS (comma-separated), else all of them
#   stacks.sh prepare           make the roots of the stacks covered, side by side, or reuse the cached ones (root
#                               only); a root that cannot be made gets one line, and its stack's tests fail with it
#   stacks.sh prepare-start     the same in the background (`make test` starts it before it builds)
#   stacks.sh prepare-wait      wait for prepare-start, print what it said, and fail as it failed
#   stacks.sh versions          each stack's QEMU, libvirt and python-libvirt versions
#   stacks.sh fresh NAME        fail, saying why, unless NAME's root is the one its recipe makes now (a host
#                               stack: unless this machine is the Debian release it is named for)
#   stacks.sh report            the facts the suite recorded per stack, also written into the README
#   stacks.sh ci-took SECONDS   how long `.ci/run` took, written into the README and docs/testing.md
#   stacks.sh stop              stop every process the tests left running (test users', and any marked BJI_GATE)
#   stacks.sh check             fail if any such process, or any mount inside the cache, is left
#   stacks.sh clean             remove what the tests make for themselves, as on a machine they never ran on: the
#                               host's test users with their homes and processes, the tests' files under /tmp, the
#                               session and system libvirt state they left, on the host and in each cached root
#                               (the roots themselves stay: they are a cache, checked against their recipe)
set -euo pipefail
cd "$(dirname "$0")/.."

CONF=${BJI_STACKS_CONF:-tests/stacks.conf}
CACHE=${BJI_STACK_CACHE:-/var/cache/blockjobinfo-tests}
# What a root holds: QEMU and libvirt (session and system daemons, with polkit and D-Bus), python3-libvirt,
# systemd to boot it (the service test) with libnss-systemd (a standard system's: DynamicUser's users resolve),
# gcc, libc6-dev and pkgconf for the package test's C example, and passwd for its test users.
PACKAGES=libvirt-daemon-driver-qemu,libvirt-daemon,libvirt-daemon-system,libvirt-clients,python3-libvirt
PACKAGES+=,qemu-system-x86,qemu-utils,dbus,polkitd,systemd,systemd-sysv,libnss-systemd,passwd,gcc,libc6-dev,pkgconf
# Only for the test of a root that cannot be made.
[ -n "${BJI_STACK_EXTRA_PACKAGES:-}" ] && PACKAGES+=",$BJI_STACK_EXTRA_PACKAGES"

# "name suite user index" per stack of the configuration, in its order.
all_stacks() {
    awk '!/^[[:space:]]*(#|$)/ {print $1, $2, $3, i++}' "$CONF"
}

# The stacks this run covers, in the configuration's order.
stacks() {
    all_stacks | awk -v w=",${BJI_STACKS:-}," 'w == ",," || index(w, "," $1 ",")'
}

# An unknown name in BJI_STACKS is an error, not a stack quietly left out.
check_selection() {
    local name
    for name in ${BJI_STACKS:+${BJI_STACKS//,/ }}; do
        all_stacks | awk -v n="$name" '$1 == n {found = 1} END {exit !found}' ||
            { echo "BJI_STACKS: no stack '$name' in $CONF" >&2; exit 2; }
    done
}

root_of() { echo "$CACHE/$1/root"; }

# The Debian archive the host itself uses (deb822 .sources or one-line sources.list), never one of our own;
# BJI_STACK_MIRROR overrides it.
debian_mirror() {
    local f uri
    if [ -n "${BJI_STACK_MIRROR:-}" ]; then
        echo "$BJI_STACK_MIRROR"
        return
    fi
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri=$(awk '/^URIs:/ {print $2; exit}' "$f")
        case $uri in */debian) echo "$uri"; return ;; esac
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        uri=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' "$f")
        [ -n "$uri" ] && { echo "${uri%/}"; return; }
    done
    return 1
}

# The test users of a stack: its user, `-lv` (in group libvirt, as nova-compute runs) and `-no` (denied by
# polkit), with uids no host user has: 50000 + 100 * the stack's index, + 0, 1, 2.
users_of() {
    echo "$1 $1-lv $1-no"
}

# What a root is made from: a root made from another recipe is stale.
recipe_of() { echo "v3 $1 $PACKAGES users $(users_of "$2")"; }

# Whether this machine is the release a host stack is named for (debNN: Debian NN): a host upgraded under the
# stack's name would test other versions of QEMU and libvirt under it. The cause in one line and 1 if not.
host_is() {
    local ID="" VERSION_ID="" PRETTY_NAME=""
    # shellcheck disable=SC1090 # os-release is shell assignments, as its specification says
    . "${BJI_OS_RELEASE:-/etc/os-release}" 2>/dev/null
    [ "$ID" = debian ] && [ "deb$VERSION_ID" = "$1" ] && return 0
    echo "$1: the host is ${PRETTY_NAME:-unknown}, not the Debian ${1#deb} its stack is named for"
    return 1
}

# Whether a stack's root is the one its recipe makes now: nothing printed and 0 if so (and for the host's
# packages), else the cause in one line and 1. A rebuild that failed leaves the old root in place, with a `failed`
# file: that root is stale, whatever it holds.
fresh() {
    local name suite user index root
    read -r name suite user index < <(all_stacks | awk -v n="$1" '$1 == n') || true
    [ -n "${name:-}" ] || { echo "$1: no such stack in $CONF"; return 1; }
    [ "$suite" = host ] && { host_is "$name"; return; }
    root=$(root_of "$name")
    if [ -f "$CACHE/$name/failed" ]; then
        echo "$name: its root is stale or missing: $(cat "$CACHE/$name/failed")"
        return 1
    fi
    [ -f "$root/.bji-stack" ] || { echo "$name: its root is not prepared at $root (scripts/stacks.sh prepare)"; return 1; }
    if [ "$(head -n 1 "$root/.bji-stack")" != "$(recipe_of "$suite" "$user")" ]; then
        echo "$name: its root at $root was made from another recipe (scripts/stacks.sh prepare makes it again)"
        return 1
    fi
}

# Makes one stack's root, or keeps the cached one; on failure, says why in one line (also kept in the stack's
# `failed` file, which its tests and its lane report: the old root, if any, is not used).
prepare_one() {
    local name=$1 suite=$2 user=$3 index=$4
    local dir=$CACHE/$name root recipe mirror release rc new log why
    root=$(root_of "$name")
    recipe=$(recipe_of "$suite" "$user")
    if [ -f "$root/.bji-stack" ] && [ "$(head -n 1 "$root/.bji-stack")" = "$recipe" ]; then
        rm -f "$dir/failed"
        echo "$name: reusing $root"
        return 0
    fi
    mkdir -p "$dir"
    fail() {
        echo "$name: cannot make the Debian $suite root: $1" | tee "$dir/failed" >&2
        return 1
    }
    command -v mmdebstrap >/dev/null || { fail "mmdebstrap is missing (make deps)"; return 1; }
    mirror=$(debian_mirror) || { fail "no Debian archive in the host's apt sources"; return 1; }
    # The suite's Release file first: it tells an unreachable archive from a suite that is gone, and whether its
    # Valid-Until has passed (testing's Release can be weeks past it on the archive these machines reach).
    release=$(curl -fsS --max-time 60 "$mirror/dists/$suite/Release" 2>&1) && rc=0 || rc=$?
    case $rc in
    0) ;;
    22) fail "the suite is gone from $mirror (${release##*: })"; return 1 ;;
    *) fail "no archive reachable at $mirror (${release##*: })"; return 1 ;;
    esac
    local aptopts=() until now
    until=$(sed -n 's/^Valid-Until: //p' <<<"$release")
    if [ -n "$until" ] && now=$(date +%s) && [ "$(date -d "$until" +%s)" -lt "$now" ]; then
        echo "$name: $suite's Release file expired $(( (now - $(date -d "$until" +%s)) / 86400 )) days ago" \
            "(Valid-Until $until): accepted, as apt's Acquire::Check-Valid-Until \"false\""
        aptopts=(--aptopt='Acquire::Check-Valid-Until "false"')
    fi
    new=$dir/root.new
    log=$dir/mmdebstrap.log
    rm -rf "$new"
    echo "$name: making a Debian $suite root in $root from $mirror"
    if ! mmdebstrap --variant=apt "${aptopts[@]}" --include="$PACKAGES" "$suite" "$new" "$mirror" \
        >"$log" 2>&1; then
        rm -rf "$new"
        # apt's own words for a missing package, else its first error.
        why=$(grep -oE "Unable to locate package [^ ]+|Package '[^']+' has no installation candidate" "$log" |
            head -n 1 | sed -E "s/Unable to locate package (.*)/package \1 is not in $suite/;
                               s/Package '(.*)' has no installation candidate/package \1 is not in $suite/" || true)
        [ -n "$why" ] || why=$(grep -E '^(E|W): ' "$log" | head -n 1 || true)
        [ -n "$why" ] || why=$(tail -n 1 "$log")
        fail "$why (mmdebstrap's log: $log)"
        return 1
    fi
    local u uid k=0
    for u in $(users_of "$user"); do
        uid=$((50000 + 100 * index + k))
        while getent passwd "$uid" >/dev/null; do uid=$((uid + 10)); done
        chroot "$new" useradd -u "$uid" -U -m -s /bin/sh -c "blockjobinfo tests" "$u"
        chmod 755 "$new/home/$u"
        k=$((k + 1))
    done
    chroot "$new" usermod -a -G libvirt "$user-lv"
    rm -rf "$new/var/cache/apt/archives/"*.deb
    printf '%s\n' "$recipe" >"$new/.bji-stack"
    rm -rf "$root" "$dir/failed"
    mv "$new" "$root"
}

prepare() {
    local name suite user index pids=() rc=0 p
    # The writing guest of the convergence tests, beside the roots.
    scripts/guest.sh prepare &
    pids+=($!)
    while read -r name suite user index; do
        [ "$suite" = host ] && continue
        if [ "$(id -u)" != 0 ]; then
            echo "$name: stacks.sh prepare must run as root" >&2
            return 1
        fi
        prepare_one "$name" "$suite" "$user" "$index" &
        pids+=($!)
    done < <(stacks)
    for p in "${pids[@]}"; do
        wait "$p" || rc=1
    done
    return "$rc"
}

# uids of the stacks' test users (those that exist): the host's, and each root's.
test_uids() {
    local name suite user index u root
    while read -r name suite user index; do
        root=$(root_of "$name")
        for u in $(users_of "$user"); do
            if [ "$suite" = host ]; then
                getent passwd "$u" | cut -d: -f3
            elif [ -f "$root/etc/passwd" ]; then
                awk -F: -v u="$u" '$1 == u {print $3}' "$root/etc/passwd"
            fi
        done
    done < <(all_stacks)
    true
}

versions() {
    local name suite user index s
    while read -r name suite user index; do
        if [ "$suite" = host ]; then
            s=
        else
            [ -f "$(root_of "$name")/.bji-stack" ] || { echo "$name: not prepared"; continue; }
            s="chroot $(root_of "$name")"
        fi
        echo "$name ($suite): $($s qemu-storage-daemon --version | head -n 1); $($s qemu-system-x86_64 --version |
            head -n 1); libvirt $($s libvirtd --version | awk '{print $NF}');" \
            "python3-libvirt $($s dpkg-query -W -f='${Version}' python3-libvirt)"
    done < <(stacks)
}

# The processes the tests left: the test users', those that carry this gate's marker, and any inside a root.
leftovers() {
    local roots
    roots=$(all_stacks | awk '$2 != "host" {print $1}' | while read -r n; do root_of "$n"; done)
    env -u BJI_GATE /usr/bin/python3 - "${BJI_GATE:-}" "$(echo $roots)" $(test_uids) <<'EOF'
import os, sys
gate = sys.argv[1]
roots = [os.path.realpath(r) + "/" for r in sys.argv[2].split()]
uids = {int(u) for u in sys.argv[3:]}
# This process and its ancestors (the gate itself) are not left behind.
mine, pid = set(), os.getpid()
while pid > 1:
    mine.add(pid)
    pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
for pid in filter(str.isdigit, os.listdir("/proc")):
    if int(pid) in mine:
        continue
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        proot = os.readlink(f"/proc/{pid}/root") + "/"
    except OSError:
        continue
    marked = gate and f"BJI_GATE={gate}".encode() in env
    if uid in uids or marked or any(proot.startswith(r) for r in roots):
        print(pid, cmd.strip())
EOF
}

stop() {
    local pids
    pids=$(leftovers | awk '{print $1}')
    [ -n "$pids" ] && kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 50); do
        [ -z "$(leftovers)" ] && return 0
        sleep 0.1
    done
    pids=$(leftovers | awk '{print $1}')
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
    sleep 0.5
}

# The tests' own traces, by the names they use: bjtest-* (session domains, runtime, share), bjsys-* (system
# domains), bji-* (temporary directories), the lock directory.
clean_tests_files() {
    local r=$1
    rm -rf "$r"/tmp/bjtest-* "$r"/tmp/bjsys-* "$r"/tmp/bji-* "$r"/tmp/blockjobinfo-tests.locks
}

clean() {
    local name suite user index u root
    [ "$(id -u)" = 0 ] || { echo "stacks.sh clean: run as root" >&2; exit 1; }
    stop
    while read -r name suite user index; do
        if [ "$suite" = host ]; then
            for u in $(users_of "$user"); do
                getent passwd "$u" >/dev/null || continue
                pkill -KILL -U "$u" 2>/dev/null || true
                for _ in $(seq 50); do pgrep -U "$u" >/dev/null || break; sleep 0.1; done
                userdel -r -f "$u" 2>/dev/null || userdel -f "$u"
                rm -rf "/home/$u"
                echo "removed the test user $u"
            done
            clean_tests_files ""
        else
            root=$(root_of "$name")
            [ -d "$root" ] || continue
            # A root's users come with it (its recipe); what the tests made in their homes does not.
            for u in $(users_of "$user"); do
                [ -d "$root/home/$u" ] && rm -rf "$root/home/$u/.config" "$root/home/$u/.cache" "$root/home/$u/.local"
            done
            clean_tests_files "$root"
        fi
    done < <(all_stacks)
    # What the gate and the tests put in the host's /run (the host's own libvirt and D-Bus state is never touched:
    # the tests run theirs in namespaces of their own, and put back what they add beside an operator's).
    rm -rf /run/bji-*
    echo "the tests' own state is removed"
}

check() {
    local left mounts
    left=$(leftovers)
    mounts=$(awk -v c="$CACHE" 'index($5, c) == 1 {print $5}' /proc/self/mountinfo)
    if [ -n "$left" ] || [ -n "$mounts" ]; then
        echo "LEFT BEHIND by the tests:" >&2
        [ -n "$left" ] && echo "$left" | sed 's/^/  process /' >&2
        [ -n "$mounts" ] && echo "$mounts" | sed 's/^/  mount /' >&2
        exit 1
    fi
    echo "nothing left behind: no test process, no mount"
}

# The facts the suite recorded (target/stacks/<stack>/<key>) as Markdown tables, a column per stack.
report_tables() {
    local d=target/stacks names k label line
    names=$(all_stacks | awk '{print $1}')
    row() { local f="$d/$1/$2"; [ -f "$f" ] && tr '\n' ' ' <"$f" | sed 's/ *$//' || echo "(not run)"; }
    echo "| stack | qemu-storage-daemon | QEMU under libvirt | libvirt | python3-libvirt |"
    echo "|---|---|---|---|---|"
    for s in $names; do
        echo "| $s | $(row "$s" qemu) | $(row "$s" qemu-system) | $(row "$s" libvirt) | $(row "$s" python-libvirt) |"
    done
    echo
    echo "| observed | $(echo $names | sed 's/ / | /g') |"
    echo "|---|$(for _ in $names; do printf -- '---|'; done)"
    while IFS='|' read -r k label; do
        line="| $label |"
        for s in $names; do line+=" $(row "$s" "$k") |"; done
        echo "$line"
    done <<'EOF'
python|the Python the wheel was installed into and tested with (tests/python_package.rs)
mirror-fields|fields of a mirror job in `query-block-jobs`
fresh-mirror|a mirror whose source QEMU scans slowly (metadata read at 256 KiB/s), read as fast as the library answers
window|length of the `offset == len && !ready` window: 8 MiB mirror at 2 MiB/s, one burst (qemu-storage-daemon)
libvirt-window|libvirt's own `virsh blockjob --raw` inside the window (shallow `virsh blockcopy`)
job-copy|libvirt's QMP job name: `virsh blockcopy`
job-active-commit|libvirt's QMP job name: `virsh blockcommit --active`
job-pull|libvirt's QMP job name: `virsh blockpull`
mirror-xml|the domain XML's `<mirror>` during a copy, once ready
soak|`make soak`: `metrics --listen` scraped by eight clients under domain churn and two libvirtd kills
EOF
}

# TEXT between the markers <!-- NAME:begin --> and <!-- NAME:end --> of FILE, so that the page shows what the
# suite last saw.
fill() {
    /usr/bin/python3 - "$1" "$2" "$3" <<'EOF'
import sys
path, name, body = sys.argv[1:]
begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
text = open(path).read()
if begin in text and end in text:
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    open(path, "w").write(f"{head}{begin}\n{body}\n{end}{tail}")
EOF
}

report() {
    local tables
    tables=$(report_tables)
    echo "$tables"
    fill README.md tested-with "$tables"
    if [ -f target/stacks/lanes-took ]; then
        fill README.md lanes-took "$(cat target/stacks/lanes-took)"
        fill docs/testing.md lanes-took "$(cat target/stacks/lanes-took)"
    fi
    if [ -f target/stacks/test-breaks-took ]; then
        fill docs/testing.md test-breaks-took "$(cat target/stacks/test-breaks-took)"
    fi
}

# What the last `make soak` saw on each stack (target/stacks/<stack>/soak), into docs/testing.md.
soak_report() {
    local s lines=""
    for s in $(stacks | awk '{print $1}'); do
        [ -f "target/stacks/$s/soak" ] && lines+="  - $s: $(cat "target/stacks/$s/soak")"$'\n'
    done
    [ -n "$lines" ] || lines="  (no \`make soak\` run recorded)"$'\n'
    echo -n "$lines"
    fill docs/testing.md soak "${lines%$'\n'}"
}

check_selection
case ${1:-} in
names) stacks | awk '{print $1}' ;;
prepare) prepare ;;
prepare-start)
    mkdir -p "$CACHE"
    rm -f "$CACHE/prepare.rc" "$CACHE/prepare.log"
    # Detached from the caller's output, which may be a pipe its reader waits on.
    (prepare >"$CACHE/prepare.log" 2>&1 && rc=0 || rc=$?; echo "$rc" >"$CACHE/prepare.rc") </dev/null >/dev/null 2>&1 &
    echo $! >"$CACHE/prepare.pid"
    ;;
prepare-wait)
    # Started and still running, or finished: its output and status. Otherwise (never started, or killed), now.
    while [ -f "$CACHE/prepare.pid" ] && [ ! -f "$CACHE/prepare.rc" ] && kill -0 "$(cat "$CACHE/prepare.pid")" 2>/dev/null; do
        sleep 0.5
    done
    if [ -f "$CACHE/prepare.rc" ]; then
        cat "$CACHE/prepare.log"
        rc=$(cat "$CACHE/prepare.rc")
        rm -f "$CACHE/prepare.rc" "$CACHE/prepare.log" "$CACHE/prepare.pid"
        exit "$rc"
    fi
    rm -f "$CACHE/prepare.pid"
    prepare
    ;;
versions) versions ;;
fresh) fresh "${2:?usage: stacks.sh fresh NAME}" ;;
report) report ;;
soak-report) soak_report ;;
ci-took)
    took=${2:?usage: stacks.sh ci-took SECONDS}
    line="\`bash .ci/run\` took $((took / 60)) min $((took % 60)) s (what the machine lacked installed first), on $(date -u +%F) with $(nproc) cores"
    fill README.md ci-took "$line"
    fill docs/testing.md ci-took "$line"
    ;;
stop) stop ;;
check) check ;;
clean) clean ;;
*) echo "usage: $0 names|prepare|prepare-start|prepare-wait|versions|fresh NAME|report|soak-report|ci-took SECONDS|stop|check|clean" >&2; exit 2 ;;
esac
