#!/usr/bin/env bash
# Installs the Debian packages the build, the tests and the demo need, when any is missing (root only).
set -euo pipefail

# qemu-storage-daemon lives in qemu-system-common; qemu-img/qemu-io in qemu-utils; virsh in libvirt-clients;
# the session libvirtd in libvirt-daemon(-driver-qemu), the system one with its users, polkit rules and config
# in libvirt-daemon-system (with dbus and polkitd); libvirt's header in libvirt-dev; gcc -m32 in gcc-multilib;
# mmdebstrap and curl make the stacks' roots (scripts/stacks.sh); systemd-container boots one (systemd-nspawn),
# systemd has systemd-socket-activate and systemd-analyze, libnss-systemd resolves dynamic users; debhelper,
# dpkg-dev and lintian build and check the Debian packages (make deb); abigail-tools guards the ABI; mandoc,
# groff-base and man-db lint and render the manual pages; python3-prometheus-client, prometheus-node-exporter
# and prometheus (server and promtool) read the metrics the tool writes, and prometheus-libvirt-exporter, a
# peer, is measured beside it; apache2-utils (htpasswd), openssl and curl make and try the web config's
# credentials; iproute2 (ss) shows what listens; strace shows how `metrics --output` opens its file;
# python3-venv holds the Python package's build tools (make wheel).
packages=(qemu-system-common qemu-system-x86 qemu-utils libvirt-dev libvirt-clients libvirt-daemon
          libvirt-daemon-driver-qemu libvirt-daemon-system dbus polkitd python3-libvirt gcc-multilib pkg-config
          valgrind mmdebstrap curl systemd systemd-container libnss-systemd debhelper dpkg-dev lintian
          abigail-tools mandoc groff-base man-db python3-prometheus-client prometheus-node-exporter prometheus
          prometheus-libvirt-exporter apache2-utils openssl iproute2 strace python3-venv)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# qemu-storage-daemon and qemu-img must come from the same QEMU (a newer backported qemu-utils breaks
# qemu-system-common 7.2).
if command -v qemu-storage-daemon >/dev/null && command -v qemu-img >/dev/null; then
    qsd=$(qemu-storage-daemon --version | head -1 | awk '{print $3}')
    img=$(qemu-img --version | head -1 | awk '{print $3}')
    [ "$qsd" = "$img" ] || missing+=(qemu-utils)
fi
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${missing[*]}; run 'make deps' as root (apt-get install)" >&2
    exit 1
fi
echo "installing: ${packages[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# Packages must not start their daemons here (libvirtd, prometheus, node_exporter, polkitd): the tests start
# their own, privately, and a build machine runs none. policy-rc.d is Debian's switch for that, removed after.
policy=/usr/sbin/policy-rc.d
ours=
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# blockjobinfo make deps: no daemon started while installing\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    ours=1
    trap 'rm -f "$policy"' EXIT
fi
# Name qemu-utils from the same release as qemu-system-*, in the same command (see above).
release=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
apt-get install -y -q --no-install-recommends --allow-downgrades \
    "${packages[@]/#qemu-utils/qemu-utils/$release}"
[ -n "$ours" ] && rm -f "$policy"
true
