"""Samples blockjobinfo.libvirt_info() beside python-libvirt's own dom.blockJobInfo() on a domain with a copy.

    libvirt_helper.py DOMAIN DISK SECONDS

SECONDS 0: one line, python-libvirt's answer beside the helper's as python-libvirt's dict (a disk with no job:
both {}). Else each sample: libvirt's answer, the helper's, libvirt's again, then whether the domain XML's <mirror> says ready;
one JSON line each, until a few samples were ready (exit 0) or SECONDS passed (exit 1).
"""
import json
import sys
import time
import xml.etree.ElementTree as ET

import libvirt

import blockjobinfo

name, disk, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
libvirt.registerErrorHandler(lambda *_: None, None)
dom = libvirt.open("qemu:///session").lookupByName(name)


def mirror_ready():
    for d in ET.fromstring(dom.XMLDesc(0)).iter("disk"):
        t = d.find("target")
        m = d.find("mirror")
        if t is not None and t.get("dev") == disk and m is not None:
            return m.get("ready") == "yes"
    return None


if seconds == 0:
    print(json.dumps({"libvirt": dom.blockJobInfo(disk, 0),
                      "ours": blockjobinfo.as_libvirt_dict(blockjobinfo.libvirt_info(dom, disk))}))
    sys.exit(0)

deadline = time.time() + seconds
ready = 0
while time.time() < deadline:
    before = dom.blockJobInfo(disk, 0)
    ours = blockjobinfo.libvirt_info(dom, disk)
    after = dom.blockJobInfo(disk, 0)
    xml_ready = mirror_ready()
    line = {"before": before, "after": after, "xml_ready": xml_ready,
            "ours": blockjobinfo.as_libvirt_dict(ours),
            # JSON cannot tell an IntEnum from an int: python-libvirt's values are plain ints.
            "plain": all(type(v) is int for v in blockjobinfo.as_libvirt_dict(ours).values())}
    print(json.dumps(line), flush=True)
    if xml_ready:
        ready += 1
        if ready >= 5:
            sys.exit(0)
    time.sleep(0.05)
sys.exit(1)
