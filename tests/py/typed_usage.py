"""What a typed program writes against the package: mypy --strict must accept it (tests/python_package.rs)."""

import asyncio
import os
from typing import Dict, Optional
import blockjobinfo
from blockjobinfo import QmpSource, BlockJobInfo, Outcome, OutcomeKind

def f(path: str) -> Optional[int]:
    with QmpSource(path, timeout=2.0) as src:
        info: Optional[BlockJobInfo] = src.info("m", bandwidth_bytes=True)
        out: Outcome = src.wait("m", "gone", timeout=3)
        if out.kind is OutcomeKind.FAILED and out.error is not None:
            return len(out.error)
        return None if info is None else info.cur

async def g(src: QmpSource) -> bool:
    return bool(await src.wait_async("m"))

try:
    blockjobinfo.translate("[]", "m")
except blockjobinfo.BlockJobInfoError as e:
    print(e)

def h(path: "os.PathLike[str]") -> Dict[str, int]:
    with QmpSource(path) as src, QmpSource(("localhost", 4444)) as other:
        until: blockjobinfo.Until = "gone"
        src.wait("m", until)
        assert not other.closed
        return blockjobinfo.as_libvirt_dict(src.info("m"))

try:
    blockjobinfo.translate(b"[]", "m")
except blockjobinfo.QemuError as e:
    print(e.error_class, e.desc)
except blockjobinfo.AmbiguousJobError as e:
    print(e.candidates[0])
except blockjobinfo.QmpConnectionError as e:
    print(e.errno)
print(blockjobinfo.__version__)
