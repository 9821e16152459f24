#!/usr/bin/python3
"""Polls dom.blockJobInfo() every 50 ms for SECONDS and records every answer or libvirtError.

    poll.py DOMAIN SECONDS OUTPUT

Writes one JSON object to OUTPUT: the answers in order, each {"ok": ...} or {"code": ..., "message": ...}, and
the longest single call in seconds. Used to show that a dying libvirtd or domain gives libvirt's own errors,
quickly, and no crash.
"""
import json
import sys
import time

import libvirt

name, seconds, output = sys.argv[1], float(sys.argv[2]), sys.argv[3]
libvirt.registerErrorHandler(lambda *_: None, None)
dom = libvirt.open("qemu:///session").lookupByName(name)
answers, longest = [], 0.0
end = time.time() + seconds
while time.time() < end:
    t = time.time()
    try:
        answers.append({"ok": dom.blockJobInfo("vda", 0)})
    except libvirt.libvirtError as e:
        answers.append({"code": e.get_error_code(), "message": e.get_error_message()})
    longest = max(longest, time.time() - t)
    time.sleep(0.05)
with open(output, "w") as f:
    json.dump({"answers": answers, "longest": longest}, f)
