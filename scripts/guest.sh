#!/usr/bin/env bash
# The writing guest the convergence tests boot (tests/common/guest.rs): Debian's kernel and an initramfs of
# busybox-static, the virtio disk's modules and tests/guest/init. Cached like the stacks' roots, and made again
# when its recipe (this script, the init, the packages' versions) changes.
#   guest.sh prepare    make it in $CACHE/guest, or keep the cached one; then find how this machine runs it
#   guest.sh recipe     print the recipe
# $CACHE/guest/accel says how: `kvm`, or `tcg: WHY` when KVM cannot boot it (no /dev/kvm, or a KVM that runs
# only guests made for it, as a nested PVM host's does: Debian's kernel never reaches its init there).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${BJI_STACK_CACHE:-/var/cache/blockjobinfo-tests}
DIR=$CACHE/guest
MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk"

# The kernel package linux-image-amd64 stands for on this host's Debian, and busybox-static's version.
kernel_pkg() { apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
recipe() {
    local k
    k=$(kernel_pkg)
    [ -n "$k" ] || { echo "guest: apt knows no linux-image-amd64" >&2; return 1; }
    {
        echo "$k $(apt-cache policy "$k" | awk '/Candidate:/ {print $2}')"
        echo "busybox-static $(apt-cache policy busybox-static | awk '/Candidate:/ {print $2}')"
        sha256sum scripts/guest.sh tests/guest/init | awk '{print $1}'
    } | sha256sum | awk '{print $1}'
}

prepare() {
    local r work k m f
    r=$(recipe)
    if [ -f "$DIR/recipe" ] && [ "$(cat "$DIR/recipe")" = "$r" ] && [ -f "$DIR/vmlinuz" ] && [ -f "$DIR/initrd.gz" ]; then
        echo "guest: reusing $DIR"
        [ -f "$DIR/accel" ] || probe
        echo "guest: runs with $(cat "$DIR/accel")"
        return 0
    fi
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    k=$(kernel_pkg)
    (cd "$work" && apt-get download -q "$k" busybox-static >download.log 2>&1) || {
        echo "guest: cannot download $k and busybox-static: $(tail -n 1 "$work/download.log")" >&2
        return 1
    }
    mkdir -p "$work/deb" "$work/init/bin" "$work/init/lib/modules" "$work/init/proc" "$work/init/sys" \
        "$work/init/dev" "$work/init/tmp"
    for f in "$work"/*.deb; do dpkg-deb -x "$f" "$work/deb"; done
    cp "$work/deb/bin/busybox" "$work/init/bin/busybox"
    for m in $("$work/init/bin/busybox" --list); do
        [ "$m" = busybox ] || ln -s busybox "$work/init/bin/$m"
    done
    for m in $MODULES; do
        f=$(find "$work/deb/lib/modules" -name "$m.ko" | head -n 1)
        [ -n "$f" ] || { echo "guest: $k has no module $m" >&2; return 1; }
        cp "$f" "$work/init/lib/modules/"
    done
    install -m 0755 tests/guest/init "$work/init/init"
    mkdir -p "$DIR.new"
    (cd "$work/init" && find . | "$work/init/bin/busybox" cpio -o -H newc 2>/dev/null) | gzip -9 >"$DIR.new/initrd.gz"
    cp "$work"/deb/boot/vmlinuz-* "$DIR.new/vmlinuz"
    echo "$r" >"$DIR.new/recipe"
    # World-readable: the stacks' test users boot it through libvirt.
    chmod 0755 "$DIR.new"
    chmod 0644 "$DIR.new"/*
    rm -rf "$DIR"
    mv "$DIR.new" "$DIR"
    echo "guest: made $DIR ($k)"
    probe
    echo "guest: runs with $(cat "$DIR/accel")"
}

# Boots the guest idle under KVM and waits for its init's word on the serial console.
probe() {
    local log why=""
    if [ ! -c /dev/kvm ]; then
        why="no /dev/kvm"
    elif ! command -v qemu-system-x86_64 >/dev/null; then
        why="no qemu-system-x86_64 on the host to try KVM with"
    else
        log=$(mktemp)
        timeout 30 qemu-system-x86_64 -accel kvm -m 256 -nodefaults -display none -no-reboot \
            -serial "file:$log" -kernel "$DIR/vmlinuz" -initrd "$DIR/initrd.gz" \
            -append "console=ttyS0 quiet panic=-1 bji.rate=0" >"$log.err" 2>&1 &
        local pid=$! i
        for i in $(seq 300); do
            grep -qa "bji: no /dev/vda\|bji: idle" "$log" && break
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if ! grep -qa "bji: " "$log"; then
            why="KVM did not boot Debian's kernel to its init within 30 s ($(tail -n 1 "$log.err" | cut -c1-160))"
            [ -d /sys/module/kvm_pvm ] && why="$why; this host's KVM is PVM (kvm_pvm), which runs only guests made for it"
        fi
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        rm -f "$log" "$log.err"
    fi
    if [ -z "$why" ]; then echo kvm; else echo "tcg: $why"; fi >"$DIR/accel"
    chmod 0644 "$DIR/accel"
}

case ${1:-} in
prepare) prepare ;;
probe) probe; cat "$DIR/accel" ;;
recipe) recipe ;;
*) echo "usage: $0 prepare|recipe" >&2; exit 2 ;;
esac
