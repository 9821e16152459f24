"""`make bench`'s Python rows: `QmpSource.info()` from blockjobinfo's wheel, and a plain qemu.qmp (PyPI)
`query-block-jobs` round trip, each on a monitor of its own, in alternating rounds.

    py_info.py OURS_SOCKET QEMU_QMP_SOCKET JOB CALLS_PER_ROUND ROUNDS

Prints one line per call: "ours NS" or "qmp NS".
"""
import asyncio
import sys
import time

from qemu.qmp import QMPClient

import blockjobinfo

ours_path, qmp_path, job, per, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])


async def main() -> None:
    src = blockjobinfo.QmpSource(ours_path)
    client = QMPClient("bench")
    await client.connect(qmp_path)
    out = []
    for _ in range(rounds):
        for _ in range(per):
            t = time.perf_counter_ns()
            info = src.info(job)
            out.append(f"ours {time.perf_counter_ns() - t}")
            assert info is not None
        for _ in range(per):
            t = time.perf_counter_ns()
            jobs = await client.execute("query-block-jobs")
            out.append(f"qmp {time.perf_counter_ns() - t}")
            assert jobs
    await client.disconnect()
    src.close()
    print("\n".join(out))


asyncio.run(main())
