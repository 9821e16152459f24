#!/usr/bin/python3
"""The calls any reader of a host's block jobs makes to libvirt, each kind timed over the whole host, one after
another, best of ROUNDS: listing the running domains, one XML per domain, one blockJobInfo per disk. Their sum is
what `make bench` holds a scrape against.

    host_calls.py URI ROUNDS

Prints one JSON object: {"list": s, "xml": s, "job_info": s, "domains": n, "disks": n}.
"""
import json
import sys
import time
import xml.etree.ElementTree as ET

import libvirt

uri, rounds = sys.argv[1], int(sys.argv[2])
libvirt.registerErrorHandler(lambda *_: None, None)
conn = libvirt.openReadOnly(uri)
doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
# The disks are read once, outside the timing: what is timed is the calls themselves.
disks = {d.name(): [t.get("dev") for t in ET.fromstring(d.XMLDesc(0)).findall("./devices/disk/target")] for d in doms}
best = {"list": float("inf"), "xml": float("inf"), "job_info": float("inf")}
for _ in range(rounds):
    t = time.perf_counter()
    conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    best["list"] = min(best["list"], time.perf_counter() - t)
    t = time.perf_counter()
    for d in doms:
        d.XMLDesc(0)
    best["xml"] = min(best["xml"], time.perf_counter() - t)
    t = time.perf_counter()
    for d in doms:
        for disk in disks[d.name()]:
            d.blockJobInfo(disk, libvirt.VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES)
    best["job_info"] = min(best["job_info"], time.perf_counter() - t)
best.update(domains=len(doms), disks=sum(len(v) for v in disks.values()))
print(json.dumps(best))
