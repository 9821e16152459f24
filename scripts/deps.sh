#!/usr/bin/env bash
# Installs the Debian packages the build, the tests and the demo need, when any is missing (root only).
set -euo pipefail

# qemu-storage-daemon lives in qemu-system-common; qemu-img/qemu-io in qemu-utils; virsh in libvirt-clients;
# the session libvirtd in libvirt-daemon(-driver-qemu); libvirt's header in libvirt-dev; gcc -m32 in gcc-multilib;
# mmdebstrap makes the Debian 13 test stack (scripts/stacks.sh); debhelper, dpkg-dev and lintian build and check
# the Debian packages (make deb); abigail-tools guards the ABI; mandoc, groff-base and man-db lint and render
# the manual pages; python3-prometheus-client and prometheus-node-exporter read the metrics the tool writes.
packages=(qemu-system-common qemu-system-x86 qemu-utils libvirt-dev libvirt-clients libvirt-daemon
          libvirt-daemon-driver-qemu python3-libvirt gcc-multilib pkg-config valgrind mmdebstrap
          debhelper dpkg-dev lintian abigail-tools mandoc groff-base man-db python3-prometheus-client
          prometheus-node-exporter)

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
# Name qemu-utils from the same release as qemu-system-*, in the same command (see above).
release=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
apt-get install -y -q --no-install-recommends --allow-downgrades \
    "${packages[@]/#qemu-utils/qemu-utils/$release}"
