#!/usr/bin/python3
"""Asks dom.blockJobInfo() three times in one process: libvirt's own answer, the preloaded library's through one
source, libvirt's again (BLOCKJOBINFO_SOURCE is read at every call).

    ask.py URI DOMAIN DISK SOURCE

Prints one JSON object: {"before": ..., "ours": ..., "after": ...}, each python-libvirt's dict ({} for no job).
"""
import json
import os
import sys

import libvirt

uri, name, disk, source = sys.argv[1:5]
libvirt.registerErrorHandler(lambda *_: None, None)  # errors are for the caller, not stderr
dom = libvirt.open(uri).lookupByName(name)


def ask(src):
    os.environ["BLOCKJOBINFO_SOURCE"] = src
    return dom.blockJobInfo(disk, 0)


print(json.dumps({"before": ask("libvirt"), "ours": ask(source), "after": ask("libvirt")}))
