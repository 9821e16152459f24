#!/usr/bin/env bash
# The test stacks besides the host's own Debian 12 packages (QEMU 7.2, libvirt 9.0):
#   deb13: a Debian 13 root (QEMU 10.0, libvirt 11.3, python3-libvirt) made with mmdebstrap, whose programs the
#          tests run through chroot (tests/common/stack.rs).
#
#   stacks.sh prepare    make the Debian 13 root, or reuse the cached one (root only)
#   stacks.sh versions   print each stack's QEMU, libvirt and python-libvirt versions
#   stacks.sh report     print the facts the suite recorded per stack and write them into the README
#   stacks.sh stop       stop every process the tests left running (test users', and any marked BJI_GATE)
#   stacks.sh check      fail if any such process, or any mount inside the cache, is left
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${BJI_STACK_CACHE:-/var/cache/blockjobinfo-tests}
ROOT=${BJI_DEB13_ROOT:-$CACHE/deb13/root}
# gcc, libc6-dev and pkgconf: the package test builds a C example in the root with pkg-config alone.
PACKAGES=libvirt-daemon-driver-qemu,libvirt-daemon,libvirt-clients,python3-libvirt,qemu-system-x86,qemu-utils,gcc,libc6-dev,pkgconf
# What the cached root was made from: a change here makes a new one.
RECIPE="v1 trixie $PACKAGES"
USER13=bjtest13

# The Debian archive the host itself uses (deb822 .sources or one-line sources.list), never one of our own.
debian_mirror() {
    local f uri
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
    echo "no Debian archive in the host's apt sources" >&2
    return 1
}

# A uid for the Debian 13 test user that no host user has, so that the host can tell its processes apart.
free_uid() {
    local uid
    for uid in $(seq 60100 60999); do
        getent passwd "$uid" >/dev/null && continue
        grep -q "^[^:]*:[^:]*:$uid:" "$1/etc/passwd" && continue
        echo "$uid"
        return
    done
    return 1
}

prepare() {
    if [ -f "$ROOT/.bji-stack" ] && [ "$(head -n 1 "$ROOT/.bji-stack")" = "$RECIPE" ]; then
        echo "deb13: reusing $ROOT" >&2
        return
    fi
    [ "$(id -u)" = 0 ] || { echo "stacks.sh prepare must run as root" >&2; exit 1; }
    command -v mmdebstrap >/dev/null || { echo "mmdebstrap is missing: make deps" >&2; exit 1; }
    local mirror new
    mirror=$(debian_mirror)
    new=$(dirname "$ROOT")/root.new
    rm -rf "$new"
    mkdir -p "$(dirname "$ROOT")"
    echo "deb13: making a Debian 13 root in $ROOT from $mirror" >&2
    mmdebstrap --quiet --variant=apt --include="$PACKAGES" trixie "$new" "$mirror" >&2
    local uid
    uid=$(free_uid "$new")
    echo "$USER13:x:$uid:$uid:blockjobinfo tests:/home/$USER13:/bin/sh" >>"$new/etc/passwd"
    echo "$USER13:x:$uid:" >>"$new/etc/group"
    echo "$USER13:!:20000::::::" >>"$new/etc/shadow"
    mkdir -p "$new/home/$USER13"
    chown "$uid:$uid" "$new/home/$USER13"
    chmod 755 "$new/home/$USER13"
    rm -rf "$new/var/cache/apt/archives/"*.deb
    printf '%s\nuser %s uid %s\n' "$RECIPE" "$USER13" "$uid" >"$new/.bji-stack"
    rm -rf "$ROOT"
    mv "$new" "$ROOT"
}

# uids of the stacks' test users (those that exist).
test_uids() {
    getent passwd bjtest | cut -d: -f3
    [ -f "$ROOT/etc/passwd" ] && awk -F: -v u="$USER13" '$1 == u {print $3}' "$ROOT/etc/passwd"
    true
}

versions() {
    local s
    echo "deb12 (host): $(qemu-storage-daemon --version | head -n 1); $(qemu-system-x86_64 --version | head -n 1);" \
        "libvirt $(libvirtd --version | awk '{print $NF}'); python3-libvirt $(dpkg-query -W -f='${Version}' python3-libvirt)"
    if [ -f "$ROOT/.bji-stack" ]; then
        s="chroot $ROOT"
        echo "deb13 ($ROOT): $($s qemu-storage-daemon --version | head -n 1); $($s qemu-system-x86_64 --version | head -n 1);" \
            "libvirt $($s libvirtd --version | awk '{print $NF}'); python3-libvirt $($s dpkg-query -W -f='${Version}' python3-libvirt)"
    fi
}

# The processes the tests left: the test users', and those that carry this gate's marker.
leftovers() {
    env -u BJI_GATE /usr/bin/python3 - "${BJI_GATE:-}" "$ROOT" $(test_uids) <<'EOF'
import os, sys
gate, root, uids = sys.argv[1], os.path.realpath(sys.argv[2]), {int(u) for u in sys.argv[3:]}
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
        proot = os.readlink(f"/proc/{pid}/root")
    except OSError:
        continue
    marked = gate and f"BJI_GATE={gate}".encode() in env
    if uid in uids or marked or proot.startswith(root):
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

# The facts the suite recorded (target/stacks/<stack>/<key>) as Markdown tables.
report_tables() {
    local d=target/stacks
    row() { local f="$d/$1/$2"; [ -f "$f" ] && tr '\n' ' ' <"$f" | sed 's/ *$//' || echo "(not run)"; }
    echo "| stack | qemu-storage-daemon | QEMU under libvirt | libvirt | python3-libvirt |"
    echo "|---|---|---|---|---|"
    for s in deb12 deb13; do
        echo "| $s | $(row $s qemu) | $(row $s qemu-system) | $(row $s libvirt) | $(row $s python-libvirt) |"
    done
    echo
    echo "| observed | deb12 | deb13 |"
    echo "|---|---|---|"
    local k label
    while IFS='|' read -r k label; do
        echo "| $label | $(row deb12 "$k") | $(row deb13 "$k") |"
    done <<'EOF'
mirror-fields|fields of a mirror job in `query-block-jobs`
window|length of the `offset == len && !ready` window: 8 MiB mirror at 2 MiB/s, one burst (qemu-storage-daemon)
libvirt-window|libvirt's own `virsh blockjob --raw` inside the window (shallow `virsh blockcopy`)
job-copy|libvirt's QMP job name: `virsh blockcopy`
job-active-commit|libvirt's QMP job name: `virsh blockcommit --active`
job-pull|libvirt's QMP job name: `virsh blockpull`
mirror-xml|the domain XML's `<mirror>` during a copy, once ready
EOF
}

report() {
    local tables
    tables=$(report_tables)
    echo "$tables"
    # Between the README's markers, so that the README shows what the suite last saw.
    /usr/bin/python3 - "$tables" <<'EOF'
import sys
begin, end = "<!-- tested-with:begin -->", "<!-- tested-with:end -->"
text = open("README.md").read()
if begin in text and end in text:
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    open("README.md", "w").write(f"{head}{begin}\n{sys.argv[1]}\n{end}{tail}")
EOF
}

case ${1:-} in
prepare) prepare ;;
versions) versions ;;
report) report ;;
stop) stop ;;
check) check ;;
*) echo "usage: $0 prepare|versions|report|stop|check" >&2; exit 2 ;;
esac
