"""How far is a QEMU block job, and is it done or mirroring? libvirt's answer, never ``cur == end`` before ready.

The answers are ``virDomainGetBlockJobInfo()``'s, with Eric Blake's rules (docs/rules.md): a mirror QEMU has not
called ready is never reported done, and a job QEMU has not sized yet (``0/0``) is ``0/1``. The rules, the QMP
connection and the waits are the Rust library's; this package maps them to Python.
"""

from __future__ import annotations

import asyncio
import enum
import json
import queue
import threading
from typing import Any, Dict, Iterator, List, NamedTuple, Optional

from . import _native
from ._native import (
    AmbiguousJobError,
    BlockJobInfoError,
    QemuError,
    QmpConnectionError,
    QmpProtocolError,
    QmpTimeoutError,
    SourceClosedError,
)

# The exceptions are the native module's; they are known, and pickled, by this package's name.
for _e in (AmbiguousJobError, BlockJobInfoError, QemuError, QmpConnectionError, QmpProtocolError, QmpTimeoutError,
           SourceClosedError):
    _e.__module__ = __name__
del _e

__all__ = [
    "AmbiguousJobError",
    "BlockJobInfo",
    "BlockJobInfoError",
    "Ending",
    "JobEvent",
    "JobType",
    "Outcome",
    "OutcomeKind",
    "Progress",
    "QemuError",
    "QmpConnectionError",
    "QmpProtocolError",
    "QmpSource",
    "QmpTimeoutError",
    "RawJob",
    "SourceClosedError",
    "libvirt_info",
    "translate",
]


class JobType(enum.IntEnum):
    """libvirt's ``virDomainBlockJobType``."""

    UNKNOWN = 0
    PULL = 1
    COPY = 2
    COMMIT = 3
    ACTIVE_COMMIT = 4
    BACKUP = 5


class RawJob(NamedTuple):
    """The job as QEMU's ``query-block-jobs`` listed it."""

    type: str
    device: str
    offset: int
    len: int
    speed: int
    ready: Optional[bool]
    status: Optional[str]
    error: Optional[str]
    paused: Optional[bool]
    io_status: Optional[str]


class BlockJobInfo(NamedTuple):
    """libvirt's ``virDomainBlockJobInfo``: ``type``, ``bandwidth`` (MiB/s, or bytes/s when asked), ``cur``, ``end``.

    ``raw`` is what QEMU said, when the answer came from QEMU (None from ``translate`` and ``libvirt_info``).
    """

    type: int
    bandwidth: int
    cur: int
    end: int
    raw: Optional[RawJob] = None

    @property
    def done(self) -> bool:
        """``cur == end`` with ``end > 0``: finished, or a mirror in its mirroring phase (QEMU said ready)."""
        return self.end > 0 and self.cur == self.end


def _answer(type_: int, bandwidth: int, cur: int, end: int, raw: Optional[RawJob] = None) -> BlockJobInfo:
    """libvirt's numbers as a BlockJobInfo, the type a JobType where libvirt has a name for it."""
    try:
        type_ = JobType(type_)
    except ValueError:
        pass
    return BlockJobInfo(type_, bandwidth, cur, end, raw)


def _info(t: Any) -> BlockJobInfo:
    type_, bandwidth, cur, end, raw = t
    return _answer(type_, bandwidth, cur, end, RawJob(*raw))


class OutcomeKind(enum.Enum):
    """How a wait ended; the same endings as ``bji_wait`` in C."""

    REACHED = "reached"
    FAILED = "failed"
    CANCELLED = "cancelled"
    GONE_BEFORE_READY = "gone_before_ready"
    TIMED_OUT = "timed_out"


class Outcome(NamedTuple):
    """The end of a wait: how (``kind``), QEMU's error text when it ``FAILED``, the job's last known state and the
    QEMU event that decided it (with QEMU's ``timestamp``), if one did."""

    kind: OutcomeKind
    error: Optional[str]
    last: Optional[BlockJobInfo]
    event: Optional[Dict[str, Any]]

    def __bool__(self) -> bool:
        return self.kind is OutcomeKind.REACHED


class JobEvent(NamedTuple):
    """One event of a job's life on a monitor, as ``blockjobinfo events --qmp`` writes it.

    ``event`` is ``"watching"`` (watching began, or began again after a gap: ``jobs`` were there, each told),
    ``"start"`` (a job first seen), ``"ready"`` (its mirroring phase), ``"end"`` (``outcome``: ``"completed"``,
    ``"failed"`` with QEMU's ``error``, or ``"canceled"``; a ready copy aborted without a pivot is ``"canceled"``,
    as libvirt tells it, when a guest device or an export uses its image; with none, QEMU's ``"completed"``), ``"vanished"`` (it left while nothing told how: ``outcome`` ``"unknown"``, never a
    guess) or ``"gap"`` (the connection was lost: ``error`` says why; it is made again). ``seq`` counts from 1;
    ``qemu_time`` is QEMU's timestamp (seconds since the epoch) where an event told it."""

    seq: int
    event: str
    device: str
    type: str
    outcome: Optional[str]
    error: Optional[str]
    qemu_time: Optional[float]
    jobs: Optional[int]


class Ending(NamedTuple):
    """How a job ended, as the source heard it (``QmpSource.last_ending``).

    ``outcome`` is ``"completed"``, ``"failed"`` (with QEMU's ``error`` text), ``"canceled"`` or ``"unknown"``:
    never a success where QEMU's events cannot tell, as for a ready copy that ended without an error (a pivot and
    a cancel after ready are alike to QEMU) unless a ``wait(..., "gone")`` on the same source told it, or a job
    whose ending was not heard (the connection was lost). ``ended`` is when it ended (seconds since the epoch):
    QEMU's time when ``qemu_time``, else when the library found it; ``ran`` is how long it ran in seconds, None
    when its start was not heard."""

    outcome: str
    error: Optional[str]
    type: str
    was_ready: bool
    ended: float
    qemu_time: bool
    ran: Optional[float]


class Progress(NamedTuple):
    """Where a job stands, from the readings a source's ``progress`` calls took of it (``QmpSource.progress``).

    ``state`` is ``"measuring"`` (too few readings yet), ``"converging"`` (the remaining work shrinks: ``eta``
    holds), ``"throttled"`` (held at its speed while the guest dirties as fast: raise the speed),
    ``"diverging"`` (unthrottled and losing: ``copy-mode=write-blocking`` helps, QEMU 8.2+), ``"stalled"`` (the
    cursor still for the set time), ``"paused"``, ``"ready"`` or ``"finishing"`` (done or given up, QEMU
    finishing it). ``copy_rate`` is how fast the cursor moves and
    ``dirty_rate`` how fast QEMU's ``len`` grows (the guest writing behind the copy), in bytes per second over
    the window, None while measuring; ``net_rate`` how fast the remaining work shrinks; ``eta`` the seconds to
    the end (to ready, for a mirror) while converging, 0 when ready, else None. ``still`` and ``no_net_progress``
    are seconds: how long the cursor has not moved, and how long the remaining work has not gone below its
    lowest. ``actively_synced`` is QEMU 8.2+'s word on a write-blocking mirror, None where QEMU does not say."""

    state: str
    copy_rate: Optional[float]
    dirty_rate: Optional[float]
    net_rate: Optional[float]
    eta: Optional[float]
    offset: int
    len: int
    speed: int
    still: float
    no_net_progress: float
    actively_synced: Optional[bool]


def _timeout(timeout: Optional[float]) -> Optional[float]:
    """A number of seconds or None (a bool is neither); its value, and `until`, are checked by the native module."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    return float(timeout)


class QmpSource:
    """Block jobs of one QEMU process (or qemu-storage-daemon), read over its QMP monitor.

    ``address`` is the monitor's socket path, ``unix:PATH`` or ``tcp:HOST:PORT``. It connects at once, within
    ``timeout`` seconds, which also bounds each reply. Any number of threads may share one source; a wait holds
    nothing between its queries, so other threads' calls go on. The library only reads: it sends QEMU nothing but
    ``qmp_capabilities`` and ``query-*`` commands.
    """

    def __init__(self, address: str, *, timeout: float = 10.0) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
        self._src = _native.QmpSource(address, timeout=float(timeout))
        self.address = address

    def __enter__(self) -> "QmpSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection; a wait blocked on it raises SourceClosedError."""
        self._src.close()

    def qemu_version(self) -> "tuple[int, int, int]":
        """QEMU's (major, minor, micro), from its greeting."""
        return self._src.qemu_version()

    def info(self, device: str, *, bandwidth_bytes: bool = False) -> Optional[BlockJobInfo]:
        """The job ``device`` names (QEMU's job id or its device), as libvirt answers; None when there is none."""
        t = self._src.info(device, bandwidth_bytes=bool(bandwidth_bytes))
        return None if t is None else _info(t)

    def last_ending(self, device: str) -> Optional[Ending]:
        """How the last job ``device`` names (a job id, or a libvirt disk target) ended, as this source heard it
        from QEMU's events since it was opened (see ``Ending``); None when no ending is known. One query, so an
        ending QEMU told before the call is known."""
        t = self._src.last_ending(device)
        return None if t is None else Ending(*t)

    def progress(self, device: str) -> Optional[Progress]:
        """Reads the job ``device`` names once and says where it stands from this source's readings of it (see
        ``Progress``); None when there is no such job. The first call for a job can only say ``"measuring"`` (or
        ready, paused): call it again, a second or more apart. It only reads: it never changes a job."""
        t = self._src.progress(device)
        return None if t is None else Progress(*t)

    def set_progress_window(self, window: float = 10.0, stall_after: float = 60.0) -> None:
        """How ``progress`` measures: rates span ``window`` seconds of readings (when there are that many), and a
        cursor still for ``stall_after`` seconds is ``"stalled"``. Drops the readings taken so far."""
        for name, v in (("window", window), ("stall_after", stall_after)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"{name} must be a number of seconds, not {type(v).__name__}")
        self._src.set_progress_window(float(window), float(stall_after))

    def jobs(self, *, bandwidth_bytes: bool = False) -> List[BlockJobInfo]:
        """Every job QEMU lists, in its order."""
        return [_info(t) for t in self._src.jobs(bandwidth_bytes=bool(bandwidth_bytes))]

    def wait(self, device: str, until: str = "ready", timeout: Optional[float] = None) -> Outcome:
        """Waits until the job is ready (``"ready"``: a mirror in its mirroring phase) or has left QEMU's list
        (``"gone"``), woken by QEMU's events. ``timeout`` (seconds; None waits for ever) passing first is the
        outcome ``TIMED_OUT``, not an exception. The GIL is released meanwhile; Ctrl-C interrupts it."""
        main = threading.current_thread() is threading.main_thread()
        return self._wait(device, until, _timeout(timeout), None, main)

    async def wait_async(self, device: str, until: str = "ready", timeout: Optional[float] = None) -> Outcome:
        """``wait`` for asyncio: runs on a thread of its own and never blocks the loop (nor the loop's default
        executor). Cancelling the task raises CancelledError at once and ends the wait within 20 ms."""
        timeout_ = _timeout(timeout)
        token = _native.CancelToken()
        loop = asyncio.get_running_loop()
        future: "asyncio.Future[Outcome]" = loop.create_future()

        def settle(result: Any, error: Optional[BaseException]) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        def run() -> None:
            result: Any = None
            error: Optional[BaseException] = None
            try:
                result = self._wait(device, until, timeout_, token, False)
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
                error = e
            try:
                loop.call_soon_threadsafe(settle, result, error)
            except RuntimeError:
                pass  # the loop is closed: nobody awaits it any more

        threading.Thread(target=run, name="blockjobinfo-wait", daemon=True).start()
        try:
            return await future
        except asyncio.CancelledError:
            token.cancel()
            raise

    def events(self, timeout: Optional[float] = None) -> Iterator[JobEvent]:
        """Every job's life on this monitor as it happens (see ``JobEvent``), until ``timeout`` seconds (None: for
        ever) or until the iterator is closed (``break`` out of a ``for``, or ``close()``): the watch looks every
        20 ms, and the close waits for it up to a second. A lost connection is a ``"gap"``, made again, never the end; only a first connection that
        fails raises. The watch runs on a thread of its own (the GIL released while it waits), so Ctrl-C reaches
        the loop that iterates."""
        timeout_ = _timeout(timeout)
        token = _native.CancelToken()
        # Bounded: a consumer that stops reading holds the watch, not memory.
        lines: "queue.Queue[Any]" = queue.Queue(maxsize=1024)
        done = object()

        def put(item: Any) -> bool:
            while not token.cancelled:
                try:
                    lines.put(item, timeout=0.02)
                    return True
                except queue.Full:
                    continue
            return False

        def run() -> None:
            end: Any = done
            try:
                self._src.watch(lambda t: put(JobEvent(*t)), timeout_, token, False)
            except BaseException as e:  # noqa: BLE001 - raised in the iterating thread
                end = e
            put(end)

        watcher = threading.Thread(target=run, name="blockjobinfo-events", daemon=True)
        watcher.start()
        try:
            while True:
                try:
                    item = lines.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            token.cancel()
            watcher.join(timeout=1.0)

    def _wait(self, device: str, until: str, timeout: Optional[float], token: Any, main: bool) -> Outcome:
        kind, error, last, event = self._src.wait(device, until, timeout, token, main)
        if token is not None and token.cancelled:
            raise asyncio.CancelledError()
        return Outcome(
            OutcomeKind(kind),
            error,
            None if last is None else _info(last),
            None if event is None else json.loads(event),
        )


def translate(reply: Any, device: str, *, bandwidth_bytes: bool = False) -> Optional[BlockJobInfo]:
    """The rules applied to a ``query-block-jobs`` reply (its JSON text, the whole reply as a dict, or its
    ``return`` list): the job ``device`` names, as libvirt answers; None when there is none."""
    t = _native.translate(reply, device, bandwidth_bytes=bool(bandwidth_bytes))
    if t is None:
        return None
    return _answer(*t)


def libvirt_info(domain: Any, disk: str, flags: int = 0) -> Optional[BlockJobInfo]:
    """libvirt's answer for a python-libvirt ``virDomain``'s ``disk``, corrected by the domain XML's ``<mirror>``
    as the drop-in's ``native`` source does, for programs that cannot preload the library: a copy or an active
    commit whose ``<mirror>`` is not ``ready='yes'`` is never reported done. None when the disk has no job."""
    from ._libvirt import corrected

    return corrected(domain, disk, flags)
