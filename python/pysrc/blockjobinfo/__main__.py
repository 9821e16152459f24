"""``python -m blockjobinfo ADDRESS [DEVICE]``: the jobs of a QEMU (or one job) as libvirt answers, one JSON
object per line with QEMU's own fields beside (``raw``). Exit status 0; 1 when DEVICE names no job; 2 on an
error (said on stderr). For the full tool (waits, watches, the exporter), see the ``blockjobinfo`` command."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import List, Optional

from . import BlockJobInfo, BlockJobInfoError, QmpSource


def _line(info: BlockJobInfo) -> str:
    d = dataclasses.asdict(info)
    d["type"] = int(info.type)
    d["done"] = info.done
    return json.dumps(d)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m blockjobinfo", description=__doc__.split("\n\n")[0])
    p.add_argument("address", help="the QMP monitor: a socket path, unix:PATH or tcp:HOST:PORT")
    p.add_argument("device", nargs="?", help="a job id or device; all jobs when left out")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds for the connection and each reply")
    args = p.parse_args(argv)
    try:
        with QmpSource(args.address, timeout=args.timeout) as src:
            if args.device is None:
                for info in src.jobs():
                    print(_line(info))
                return 0
            one = src.info(args.device)
    except (BlockJobInfoError, ValueError, TypeError) as e:
        print(f"python -m blockjobinfo: {e}", file=sys.stderr)
        return 2
    if one is None:
        print(f"python -m blockjobinfo: no block job '{args.device}'", file=sys.stderr)
        return 1
    print(_line(one))
    return 0


if __name__ == "__main__":
    sys.exit(main())
