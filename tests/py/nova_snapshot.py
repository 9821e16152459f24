#!/usr/bin/python3
"""OpenStack Nova's live snapshot of a disk, with blockjobinfo preloaded.

    nova_snapshot.py DOMAIN DISK BASE DEST ROUNDS

Each round does what Nova's _live_snapshot does: a shallow, reuse-external copy of the disk onto DEST (a new
qcow2 over BASE) with blockRebase(COPY | SHALLOW | REUSE_EXT), polls every 0.5 s until the job is "complete",
aborts it (a plain cancel of a ready mirror leaves a point-in-time copy) and compares the copy with the disk.
"Complete" is decided the way Nova did in 2016, from the numbers alone (no job, or cur == end): exactly the
check that cancelled too early. Right after the poll says complete, QEMU itself must say the job is ready
(query-block-jobs through libvirt's monitor passthrough); before aborting, libvirt's own record must say so too
(<mirror ready='yes'>). Prints one JSON line per round; exits non-zero on any violation.
"""
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import libvirt
import libvirt_qemu

name, disk, base, dest, rounds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
libvirt.registerErrorHandler(lambda *_: None, None)
dom = libvirt.open("qemu:///session").lookupByName(name)


def is_job_complete():
    status = dom.blockJobInfo(disk, 0)
    if not status:
        return True, status
    return status["cur"] == status["end"], status


def qemu_ready():
    """QEMU's own word, asked right after the poll said complete: a library that said so in the offset == len
    window is caught while QEMU still says not ready (a correct one said so only once QEMU had). Asked through
    libvirt's monitor passthrough, past the library."""
    reply = json.loads(libvirt_qemu.qemuMonitorCommand(dom, '{"execute": "query-block-jobs"}', 0))
    jobs = [j for j in reply["return"] if disk in j["device"]]
    return not jobs or bool(jobs[0].get("ready"))


def mirror_ready():
    for d in ET.fromstring(dom.XMLDesc(0)).findall("./devices/disk"):
        if d.find("target").get("dev") == disk:
            m = d.find("mirror")
            return m is not None and m.get("ready") == "yes"
    return False


def source_file():
    for d in ET.fromstring(dom.XMLDesc(0)).findall("./devices/disk"):
        if d.find("target").get("dev") == disk:
            return d.find("source").get("file")


failed = False
for r in range(rounds):
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, dest], check=True)
    flags = (libvirt.VIR_DOMAIN_BLOCK_REBASE_COPY | libvirt.VIR_DOMAIN_BLOCK_REBASE_SHALLOW
             | libvirt.VIR_DOMAIN_BLOCK_REBASE_REUSE_EXT)
    dom.blockRebase(disk, dest, 1, flags)  # 1 MiB/s: long enough to see every phase
    started = time.time()
    polls = []
    while True:
        complete, status = is_job_complete()
        polls.append(status)
        if complete:
            qemu_said_ready = qemu_ready()
            break
        if time.time() - started > 120:
            print(json.dumps({"round": r, "error": "never complete", "last": status}), flush=True)
            sys.exit(1)
        time.sleep(0.5)
    # libvirt processes QEMU's BLOCK_JOB_READY event asynchronously: give its record a moment to catch up.
    ready = any(mirror_ready() or time.sleep(0.05) for _ in range(40))
    dom.blockJobAbort(disk, 0)
    while dom.blockJobInfo(disk, 0):
        time.sleep(0.05)
    cmp = subprocess.run(["qemu-img", "compare", "-U", source_file(), dest], capture_output=True, text=True)
    ok = qemu_said_ready and ready and status and cmp.returncode == 0
    failed |= not ok
    print(json.dumps({"round": r, "qemu_ready_when_complete": qemu_said_ready, "ready_at_abort": ready, "final": status, "polls": len(polls),
                      "first": polls[0], "compare": cmp.returncode, "compare_out": cmp.stdout.strip()}), flush=True)
sys.exit(1 if failed else 0)
