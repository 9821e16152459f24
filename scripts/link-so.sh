#!/usr/bin/env bash
# Links libblockjobinfo.so (soname libblockjobinfo.so.0) from the crate's staticlib with libblockjobinfo.map,
# so that every export carries its symbol version. rustc writes its own, unversioned, version script for a
# cdylib, and GNU ld takes one script only; linking the staticlib with the C compiler is the route zlib-rs
# takes for libz-rs.
#
#   scripts/link-so.sh target/debug        (or target/release): writes libblockjobinfo.so and .so.0 there
#
# For the ABI tests, LINK_MAP (another version script), LINK_EXTRA (more objects) and LINK_OUT (another output,
# no .so.0 link) make variants of the library.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: link-so.sh TARGET_PROFILE_DIR}
archive=$dir/libblockjobinfo.a
out=${LINK_OUT:-$dir/libblockjobinfo.so}
map=${LINK_MAP:-libblockjobinfo.map}
[ -f "$archive" ] || { echo "link-so.sh: $archive missing: run cargo build first" >&2; exit 1; }
# What Rust's std needs from the system (rustc --print native-static-libs on this target), and only what
# is used (--as-needed). --gc-sections keeps the exports and what they reach; --whole-archive makes the
# exports' objects part of the link at all.
# shellcheck disable=SC2086 # LDFLAGS and LINK_EXTRA are lists
${CC:-cc} -shared -o "$out.tmp" \
    -Wl,-soname,libblockjobinfo.so.0 \
    -Wl,--version-script="$map" \
    -Wl,--whole-archive "$archive" -Wl,--no-whole-archive ${LINK_EXTRA:-} \
    -Wl,--gc-sections -Wl,-z,relro -Wl,-z,now -Wl,-z,noexecstack -Wl,--as-needed \
    -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc ${LDFLAGS:-}
mv -f "$out.tmp" "$out"
[ -n "${LINK_OUT:-}" ] || ln -sf libblockjobinfo.so "$dir/libblockjobinfo.so.0"
