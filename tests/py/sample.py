#!/usr/bin/python3
"""Samples dom.blockJobInfo() through python-libvirt with blockjobinfo preloaded.

    sample.py DOMAIN DISK UNTIL SECONDS SOURCES OUTPUT

Each sample asks libvirt itself (source libvirt), then every source in SOURCES (comma-separated),
then libvirt again, with flags 0 and VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES, and prints one JSON line,
with where in the library's log (this process's standard error, a file) each source's call wrote: the test
checks that each answer was the source's own, not a fallback. The
source is switched through the library's bji_dropin_set_source between calls, so all answers come from one process within
milliseconds. Samples go to the file OUTPUT. UNTIL is "ready" (stop after a few samples in the mirroring phase) or "gone" (stop when there
is no job).
"""
import ctypes
import json
import os
import sys
import time

import libvirt

name, disk, until, seconds, sources = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5].split(",")
out = open(sys.argv[6], "w")
# The preloaded library reads its environment once, at load: a program switches sources through its API.
_set_source = ctypes.CDLL(None).bji_dropin_set_source
_set_source.argtypes = [ctypes.c_char_p]


def choose(source):
    if _set_source(source.encode()) != 0:
        raise SystemExit(f"bji_dropin_set_source({source!r}) failed")


libvirt.registerErrorHandler(lambda *_: None, None)  # errors are for the caller, not stderr
dom = libvirt.open("qemu:///session").lookupByName(name)


def ask(source, flags):
    choose(source)
    return dom.blockJobInfo(disk, flags)


def ask_logged(source, flags):
    """The answer, and the [start, end) of what the call wrote to the log (the library writes fd 2 itself)."""
    start = os.lseek(2, 0, os.SEEK_CUR)
    answer = ask(source, flags)
    return answer, [start, os.lseek(2, 0, os.SEEK_CUR)]


deadline = time.time() + seconds
ready_samples = 0
while time.time() < deadline:
    for flags in (0, libvirt.VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES):
        before = ask("libvirt", flags)
        logged = {s: ask_logged(s, flags) for s in sources}
        after = ask("libvirt", flags)
        ours = {s: a for s, (a, _) in logged.items()}
        logs = {s: span for s, (_, span) in logged.items()}
        print(json.dumps({"t": round(time.time(), 3), "flags": flags, "before": before, "after": after, "ours": ours,
                          "logs": logs}), file=out, flush=True)
    if before and before["end"] > 0 and before["cur"] == before["end"]:
        ready_samples += 1
    if (until == "ready" and ready_samples >= 5) or (until == "gone" and not before and not after):
        sys.exit(0)
    time.sleep(0.02)
print(json.dumps({"timeout": True}), file=out, flush=True)
sys.exit(1)
