#!/usr/bin/python3
"""Asks dom.blockJobInfo() three times in one process: libvirt's own answer, the preloaded library's through one
source, libvirt's again (switched with bji_dropin_set_source).

    ask.py URI DOMAIN DISK SOURCE

Prints one JSON object: {"before": ..., "ours": ..., "after": ...}, each python-libvirt's dict ({} for no job).
"""
import ctypes
import json
import sys

import libvirt

uri, name, disk, source = sys.argv[1:5]
# The preloaded library reads its environment once, at load: a program switches sources through its API.
_set_source = ctypes.CDLL(None).bji_dropin_set_source
_set_source.argtypes = [ctypes.c_char_p]


def choose(source):
    if _set_source(source.encode()) != 0:
        raise SystemExit(f"bji_dropin_set_source({source!r}) failed")


libvirt.registerErrorHandler(lambda *_: None, None)  # errors are for the caller, not stderr
dom = libvirt.open(uri).lookupByName(name)


def ask(src):
    choose(src)
    return dom.blockJobInfo(disk, 0)


print(json.dumps({"before": ask("libvirt"), "ours": ask(source), "after": ask("libvirt")}))
