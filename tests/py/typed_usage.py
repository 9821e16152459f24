"""What a typed program writes against the package: mypy --strict must accept it (tests/python_package.rs)."""

import asyncio
from typing import Optional
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
