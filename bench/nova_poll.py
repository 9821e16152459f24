#!/usr/bin/python3
"""Nova's wait for a block copy's mirroring phase, as nova/virt/libvirt/guest.py does it: every 0.5 s,
dom.blockJobInfo(); once end != 0 and cur == end, the domain XML's <mirror ready='yes'>. Prints "polling" once
connected, then the wall-clock time (time.time()) at which the loop saw the job done.

    nova_poll.py DOMAIN DISK
"""
import sys
import time
import xml.etree.ElementTree as ET

import libvirt

dom = libvirt.open("qemu:///session").lookupByName(sys.argv[1])
disk = sys.argv[2]
print("polling", flush=True)


def mirror_ready():
    for d in ET.fromstring(dom.XMLDesc(0)).iter("disk"):
        target = d.find("target")
        if target is not None and target.get("dev") == disk:
            mirror = d.find("mirror")
            return mirror is not None and mirror.get("ready") == "yes"
    return False


seen = False
while True:
    info = dom.blockJobInfo(disk, 0)
    if info:
        seen = True
        if info["end"] != 0 and info["cur"] == info["end"] and mirror_ready():
            break
    elif seen:
        break  # Nova: no job any more counts as complete
    time.sleep(0.5)
print(f"{time.time():.6f}", flush=True)
