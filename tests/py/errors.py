#!/usr/bin/python3
"""Errors and empty answers through python-libvirt, for one source (BLOCKJOBINFO_SOURCE from the caller).

    errors.py RUNNING_DOMAIN INACTIVE_DOMAIN

Prints one JSON object: for each case, the result or the libvirtError's code and message.
"""
import json
import sys

import libvirt

libvirt.registerErrorHandler(lambda *_: None, None)
running, inactive = sys.argv[1], sys.argv[2]


def attempt(fn):
    try:
        return {"ok": fn()}
    except libvirt.libvirtError as e:
        return {"code": e.get_error_code(), "message": e.get_error_message()}


rw = libvirt.open("qemu:///session")
ro = libvirt.openReadOnly("qemu:///session")
out = {
    "no_job": attempt(lambda: rw.lookupByName(running).blockJobInfo("vda", 0)),
    "unknown_disk": attempt(lambda: rw.lookupByName(running).blockJobInfo("vdz", 0)),
    "bad_flags": attempt(lambda: rw.lookupByName(running).blockJobInfo("vda", 0x10)),
    "not_running": attempt(lambda: rw.lookupByName(inactive).blockJobInfo("vda", 0)),
    "read_only": attempt(lambda: ro.lookupByName(running).blockJobInfo("vda", 0)),
}
print(json.dumps(out, sort_keys=True))
