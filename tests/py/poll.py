#!/usr/bin/python3
"""Polls dom.blockJobInfo() every 50 ms and records every answer or libvirtError, until five errors in a row
came after an answer, or SECONDS passed.

    poll.py DOMAIN SECONDS OUTPUT

Says "answered" on stdout at its first answer (the test breaks libvirt only then). Writes one JSON object to
OUTPUT: the answers in order, each {"ok": ...} or {"code": ..., "message": ...}, and the longest single call in
seconds. Used to show that a dying libvirtd or domain gives libvirt's own errors, quickly, and no crash.
"""
import json
import sys
import time

import libvirt

name, seconds, output = sys.argv[1], float(sys.argv[2]), sys.argv[3]
libvirt.registerErrorHandler(lambda *_: None, None)
dom = libvirt.open("qemu:///session").lookupByName(name)
answers, longest, failing = [], 0.0, 0
end = time.time() + seconds
while time.time() < end and failing < 5:
    t = time.time()
    try:
        answers.append({"ok": dom.blockJobInfo("vda", 0)})
        if len(answers) == 1:
            print("answered", flush=True)
    except libvirt.libvirtError as e:
        answers.append({"code": e.get_error_code(), "message": e.get_error_message()})
        failing = failing + 1 if any("ok" in a for a in answers) else 0
    longest = max(longest, time.time() - t)
    time.sleep(0.05)
with open(output, "w") as f:
    json.dump({"answers": answers, "longest": longest}, f)
