#!/usr/bin/python3
"""The calls any reader of a host's block jobs makes to libvirt, each kind timed over the whole host, one after
another: listing the running domains, one XML per domain, one blockJobInfo per disk. Their sum is what
`make bench` holds a scrape against, round by round.

    host_calls.py URI

Reads a line per round from stdin, makes the calls once and prints one JSON line:
{"list": s, "xml": s, "job_info": s, "domains": n, "disks": n}. Between rounds the bench scrapes the exporter,
so both sides see the same host at the same moment.
"""
import json
import sys
import time
import xml.etree.ElementTree as ET

import libvirt

uri = sys.argv[1]
libvirt.registerErrorHandler(lambda *_: None, None)
conn = libvirt.openReadOnly(uri)
doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
# The disks are read once, outside the timing: what is timed is the calls themselves.
disks = {d.name(): [t.get("dev") for t in ET.fromstring(d.XMLDesc(0)).findall("./devices/disk/target")] for d in doms}
for _ in sys.stdin:
    took = {}
    t = time.perf_counter()
    conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    took["list"] = time.perf_counter() - t
    t = time.perf_counter()
    for d in doms:
        d.XMLDesc(0)
    took["xml"] = time.perf_counter() - t
    t = time.perf_counter()
    for d in doms:
        for disk in disks[d.name()]:
            d.blockJobInfo(disk, libvirt.VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES)
    took["job_info"] = time.perf_counter() - t
    took.update(domains=len(doms), disks=sum(len(v) for v in disks.values()))
    print(json.dumps(took), flush=True)
