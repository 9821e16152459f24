#!/usr/bin/env bash
# `make deb`: the three Debian packages, built by dpkg-buildpackage from a copy of the tree (it writes into the
# source's parent directory, which must not be the checkout's), checked by lintian. Output: target/deb/*.deb.
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$(pwd -P)
version=$(dpkg-parsechangelog -S Version)
out=$checkout/target/deb
src=$out/build/blockjobinfo-$version
rm -f "$out"/*.deb "$out"/*.changes "$out"/*.buildinfo
mkdir -p "$src"
# The tree's files as they are in the work tree, committed or not (and not ignored).
rm -rf "$src"
mkdir -p "$src"
git ls-files -z --cached --others --exclude-standard |
    xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh |
    tar --null -T - -cf - | tar -xf - -C "$src"
# -d: the Rust toolchain comes from rustup (Debian 12's rustc is older than the crate's rust-version).
# Cargo builds into the checkout's own target directory: the dependencies built for `make release` are reused
# (only the crate itself, at another path, and what dpkg's build flags change, are built again).
(cd "$src" && CARGO_TARGET_DIR="$checkout/target" dpkg-buildpackage -b -d -us -uc --no-sign)
mv "$out/build"/*.deb "$out/build"/*.changes "$out/build"/*.buildinfo "$out/"
# An error or a warning fails the build; the informational tags left are listed, with why, in the README.
lintian --fail-on error,warning --info --display-info "$out"/*.changes
ls -l "$out"/*.deb
