#!/usr/bin/python3
"""dom.blockJobInfo() through python-libvirt, as Nova calls it: N per-call latencies in nanoseconds.

    virt_bench.py DOMAIN N
"""
import sys
import time

import libvirt

dom = libvirt.open("qemu:///session").lookupByName(sys.argv[1])
for _ in range(int(sys.argv[2])):
    t = time.perf_counter_ns()
    dom.blockJobInfo("vda", 0)
    print(time.perf_counter_ns() - t)
