"""The python-libvirt helper: libvirt's answer corrected by the domain XML, as the drop-in's ``native`` source."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from . import _native

if TYPE_CHECKING:
    from . import BlockJobInfo


def corrected(domain: Any, disk: str, flags: int = 0) -> Optional["BlockJobInfo"]:
    from . import _answer

    if not isinstance(disk, str):
        raise TypeError(f"disk must be a str, not {type(disk).__name__}")
    # libvirt's own answer first, then the XML: a mirror that turns ready in between is read as not ready yet,
    # never the other way round.
    info = domain.blockJobInfo(disk, flags)
    if not info:
        return None
    xml = domain.XMLDesc(0)
    return _answer(*_native.correct_by_xml(info["type"], info["bandwidth"], info["cur"], info["end"], xml, disk))
