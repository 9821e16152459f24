"""The package's exceptions, under the standard bases a caller already catches (``TimeoutError``,
``ConnectionError``, ``LookupError``), raised by the native module (``python/src/lib.rs``'s ``to_py``)."""

from __future__ import annotations

from typing import Optional, Tuple


class BlockJobInfoError(Exception):
    """Every error of blockjobinfo."""


class QmpConnectionError(BlockJobInfoError, ConnectionError):
    """QEMU cannot be reached, the connection broke, or the peer is refused.

    ``errno`` is the system's error number where the system gave one (``errno.ECONNREFUSED``, ``errno.ENOENT``),
    else None; the message is the library's."""

    def __init__(self, message: str, errno: Optional[int] = None) -> None:
        super().__init__(message)
        # OSError's own attribute, set after construction: OSError(errno, text) would rewrite the message.
        self.errno = errno

    def __reduce__(self) -> "tuple[type, tuple[str, Optional[int]], dict[str, object]]":
        # OSError's errno is not in __dict__: pickled by hand, the rest (notes, attributes) as it is.
        return type(self), (str(self.args[0]), self.errno), self.__dict__


class QmpTimeoutError(BlockJobInfoError, TimeoutError):
    """QEMU did not answer in time (``errno`` is ``errno.ETIMEDOUT``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        import errno as _errno

        self.errno = _errno.ETIMEDOUT


class QmpProtocolError(BlockJobInfoError):
    """What came from QEMU is not QMP as expected (malformed, too large, too many jobs)."""


class QemuError(BlockJobInfoError):
    """QEMU answered a query with an error: ``error_class`` (QMP's ``class``, such as ``"GenericError"``) and
    ``desc``, QEMU's own words, as qemu.qmp's ``ExecuteError`` has them."""

    def __init__(self, message: str, error_class: str = "", desc: str = "") -> None:
        super().__init__(message)
        self.error_class = error_class
        self.desc = desc


class AmbiguousJobError(BlockJobInfoError, LookupError):
    """The name given (``device``) names more than one block job: ``candidates`` are the job ids it matched."""

    def __init__(self, message: str, device: str = "", candidates: Tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.device = device
        self.candidates = tuple(candidates)


class SourceClosedError(BlockJobInfoError):
    """The source was closed, or the call interrupted, while it waited."""


for _e in (BlockJobInfoError, QmpConnectionError, QmpTimeoutError, QmpProtocolError, QemuError, AmbiguousJobError,
           SourceClosedError):
    # Known, and pickled, by the package's name.
    _e.__module__ = "blockjobinfo"
del _e
