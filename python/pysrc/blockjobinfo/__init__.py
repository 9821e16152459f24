"""How far is a QEMU block job, and is it done or mirroring? libvirt's answer, never ``cur == end`` before ready.

The answers are ``virDomainGetBlockJobInfo()``'s, with Eric Blake's rules (docs/rules.md): a mirror QEMU has not
called ready is never reported done, and a job QEMU has not sized yet (``0/0``) is ``0/1``. The rules, the QMP
connection and the waits are the Rust library's; this package maps them to Python.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import enum
import json
import os
import queue
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List, Literal, Optional, Set, Tuple, TypeVar, Union


def _in_main_interpreter() -> bool:
    """Whether this is the process's main interpreter (CPython's private modules say; without them, it is)."""
    import importlib

    for name in ("_interpreters", "_xxsubinterpreters"):
        try:
            interpreters: Any = importlib.import_module(name)
        except ImportError:
            continue
        return bool(interpreters.get_current() == interpreters.get_main())
    return True


# One interpreter per process: the module's state (its logging, its exit handler, its sources) is the process's,
# and a sub-interpreter's exit would stop the main one's logging, or hang the process's exit.
if not _in_main_interpreter():
    raise ImportError("blockjobinfo cannot be imported in a sub-interpreter: import it in the main interpreter")

from . import _native  # noqa: E402 - after the check above
from ._errors import (  # noqa: E402
    AmbiguousJobError,
    BlockJobInfoError,
    QemuError,
    QmpConnectionError,
    QmpProtocolError,
    QmpTimeoutError,
    SourceClosedError,
)

__version__: str = _native.__version__


def flush_logging(timeout: float = 1.0) -> bool:
    """The library's records reach ``logging`` from a thread of the module's own, a little after they were
    made (their ``threadName`` is that thread's): waits up to ``timeout`` seconds until every record made so
    far was handed over, and says whether they all were (for a test, or before reading a log)."""
    t = _timeout(timeout)
    return bool(_native.flush_logging(1.0 if t is None else t))


def reset_logging() -> None:
    """The library's records go to ``logging`` under ``blockjobinfo`` (``blockjobinfo.wait``, ...), each
    logger's level read once and cached; after changing a level, call this to have it read again.
    (``BLOCKJOBINFO_LOG`` set in the environment sends them to stderr instead, as for C callers.)"""
    _native.reset_logging()

Until = Literal["ready", "gone"]
T = TypeVar("T")

__all__ = [
    "__version__",
    "as_libvirt_dict",
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
    "flush_logging",
    "reset_logging",
    "translate",
    "Until",
]


class JobType(enum.IntEnum):
    """libvirt's ``virDomainBlockJobType``."""

    UNKNOWN = 0
    PULL = 1
    COPY = 2
    COMMIT = 3
    ACTIVE_COMMIT = 4
    BACKUP = 5


@dataclasses.dataclass(frozen=True)
class RawJob:
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


@dataclasses.dataclass(frozen=True)
class BlockJobInfo:
    """libvirt's ``virDomainBlockJobInfo``: ``type``, ``bandwidth`` (MiB/s, or bytes/s when asked), ``cur``, ``end``.

    ``raw`` is what QEMU said, when the answer came from QEMU (None from ``translate`` and ``libvirt_info``); it
    takes no part in equality, so the same answer from ``info`` and from ``translate`` compares equal.
    """

    # A JobType where libvirt has a name for the job's type, else libvirt's number (a JobType is an int too).
    type: Union[JobType, int]
    bandwidth: int
    cur: int
    end: int
    raw: Optional[RawJob] = dataclasses.field(default=None, compare=False)

    def as_libvirt_dict(self) -> Dict[str, int]:
        """The answer exactly as python-libvirt's ``virDomain.blockJobInfo()`` gives it: a dict of ``type``,
        ``bandwidth``, ``cur`` and ``end``, plain ints."""
        return {"type": int(self.type), "bandwidth": int(self.bandwidth), "cur": int(self.cur), "end": int(self.end)}

    @property
    def done(self) -> bool:
        """``cur == end`` with ``end > 0``: finished, or a mirror in its mirroring phase (QEMU said ready)."""
        return self.end > 0 and self.cur == self.end


def _answer(type_: int, bandwidth: int, cur: int, end: int, raw: Optional[RawJob] = None) -> BlockJobInfo:
    """libvirt's numbers as a BlockJobInfo, the type a JobType where libvirt has a name for it."""
    named: Union[JobType, int] = type_
    try:
        named = JobType(type_)
    except ValueError:
        pass
    return BlockJobInfo(named, bandwidth, cur, end, raw)


def as_libvirt_dict(info: Optional[BlockJobInfo]) -> Dict[str, int]:
    """python-libvirt's ``blockJobInfo()`` dict for an answer of this package, ``{}`` for None (no job), as
    python-libvirt says it."""
    return {} if info is None else info.as_libvirt_dict()


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


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The end of a wait: how (``kind``), QEMU's error text when it ``FAILED``, the job's last known state and the
    QEMU event that decided it (with QEMU's ``timestamp``), if one did."""

    kind: OutcomeKind
    error: Optional[str]
    last: Optional[BlockJobInfo]
    event: Optional[Dict[str, Any]]

    def __bool__(self) -> bool:
        return self.kind is OutcomeKind.REACHED


@dataclasses.dataclass(frozen=True)
class JobEvent:
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


@dataclasses.dataclass(frozen=True)
class Ending:
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


@dataclasses.dataclass(frozen=True)
class Progress:
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


# Every blocking native call in flight, by its token: at exit they are cancelled (waits and watches; a query
# cannot be, and runs to its reply or its timeout) and waited for (`_at_exit`), so that none of them is inside
# the library when the interpreter finalizes.
_in_flight: Set[Any] = set()
_in_flight_changed = threading.Condition()
_exiting = False
# How long the exit waits for them: a cancelled wait leaves within 20 ms; a query in flight within its reply
# (bounded by the source's timeout). One still inside after this is parked by PyO3 if it returns during
# finalization, never stopped inside the library.
_EXIT_JOIN_SECONDS = 5.0


class _Query:
    """The token of a call that cannot be cancelled: registered for the exit to wait for, nothing more."""

    cancelled = False

    def cancel(self) -> None:
        pass


class _Flight:
    """A blocking native call registered for the exit: ``with _Flight(token):`` around it."""

    def __init__(self, token: Any) -> None:
        self.token = token

    def __enter__(self) -> Any:
        with _in_flight_changed:
            if _exiting:
                raise SourceClosedError("the interpreter is exiting")
            _in_flight.add(self.token)
        return self.token

    def __exit__(self, *exc: object) -> None:
        with _in_flight_changed:
            _in_flight.discard(self.token)
            _in_flight_changed.notify_all()


def _after_fork_in_child() -> None:
    """A forked child has none of its parent's threads: nothing of theirs is in flight in it."""
    global _in_flight, _in_flight_changed
    _in_flight = set()
    _in_flight_changed = threading.Condition()
    _native.forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _at_exit() -> None:
    """At exit (after Python joined the non-daemon threads, so it concerns daemon threads and the waits of
    ``wait_async`` and ``events``): the library's last log records are handed to ``logging`` and no more are
    sent, every wait and watch still running is cancelled, and every blocking call is waited for until it has
    left the library."""
    global _exiting
    _native.flush_logging(0.5)
    _native.stop_logging()
    with _in_flight_changed:
        _exiting = True
        for token in list(_in_flight):
            token.cancel()
        _in_flight_changed.wait_for(lambda: not _in_flight, timeout=_EXIT_JOIN_SECONDS)


async def _off_loop(call: Callable[[], T], cancel: Optional[Callable[[], None]] = None,
                    orphan: Optional[Callable[[T], None]] = None) -> T:
    """``call()`` on a daemon thread of its own (never the loop's default executor, which a few hundred waits
    would starve), awaited: the loop goes on meanwhile. A task cancelled meanwhile raises CancelledError at once
    and calls ``cancel`` (a wait's token); the call's result, if it comes, is handed to ``orphan`` (a connect's
    source is closed) on a thread of its own, or dropped."""
    loop = asyncio.get_running_loop()
    future: "asyncio.Future[T]" = loop.create_future()

    def settle(result: Any, error: Optional[BaseException]) -> None:
        if future.done():
            if orphan is not None and error is None:
                threading.Thread(target=orphan, args=(result,), name="blockjobinfo-call", daemon=True).start()
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        result: Any = None
        error: Optional[BaseException] = None
        try:
            result = call()
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
            error = e
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:
            pass  # the loop is closed: nobody awaits it any more

    threading.Thread(target=run, name="blockjobinfo-call", daemon=True).start()
    try:
        return await future
    except asyncio.CancelledError:
        if cancel is not None:
            cancel()
        raise


def _address(address: Any) -> str:
    """The monitor's address as the library takes it: a str as given (``PATH``, ``unix:PATH``,
    ``tcp:HOST:PORT``), an ``os.PathLike`` as a socket path, a ``(host, port)`` tuple as TCP."""
    if isinstance(address, str):
        return address
    if isinstance(address, os.PathLike):
        path = os.fspath(address)
        path = path if isinstance(path, str) else os.fsdecode(path)
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"the socket path must be UTF-8: {path!r}") from None
        return "unix:" + path
    if isinstance(address, tuple):
        if len(address) != 2 or not isinstance(address[0], str) or not address[0] \
                or isinstance(address[1], bool) or not isinstance(address[1], int) or not 0 < address[1] < 65536:
            raise ValueError(f"a TCP address is a (host, port) tuple with a port from 1 to 65535, not {address!r}")
        host, port = address
        # An IPv6 address in brackets, as the library reads HOST:PORT (given bracketed or not).
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"tcp:{host}:{port}"
    raise TypeError("address must be a str (a socket path, unix:PATH or tcp:HOST:PORT), an os.PathLike or a "
                    f"(host, port) tuple, not {type(address).__name__}")


class QmpSource:
    """Block jobs of one QEMU process (or qemu-storage-daemon), read over its QMP monitor.

    ``address`` is the monitor's socket path (a str or an ``os.PathLike``), ``unix:PATH``, ``tcp:HOST:PORT`` or a
    ``(host, port)`` tuple. It connects at once, within ``timeout`` seconds, which also bounds each reply. Any
    number of threads may share one source; a wait holds nothing between its queries, so other threads' calls go
    on. The library only reads: it sends QEMU nothing but ``qmp_capabilities`` and ``query-*`` commands.

    Parameters:
        address: where QEMU's monitor listens.
        timeout: seconds for the connection and for each reply (more than 0).

    Raises:
        QmpConnectionError: QEMU cannot be reached (``errno`` says why) or is not QMP.
        QmpTimeoutError: it did not greet in time.
        TypeError, ValueError: a bad address or timeout.
    """

    def __init__(self, address: Union[str, "os.PathLike[str]", Tuple[str, int]], *, timeout: float = 10.0) -> None:
        self._closed = True
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
        target = _address(address)
        with _Flight(_Query()):
            self._src = _native.QmpSource(target, timeout=float(timeout))
        self._closed = False
        self.address = target

    def __repr__(self) -> str:
        return f"<blockjobinfo.QmpSource {self.address!r}{' closed' if self._closed else ''}>"

    def __enter__(self) -> "QmpSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            warnings.warn(f"{self!r} was never closed", ResourceWarning, source=self, stacklevel=2)
            self.close()

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    def close(self) -> None:
        """Closes the connection; a wait blocked on it raises SourceClosedError. Closing twice does nothing."""
        self._closed = True
        self._src.close()

    def qemu_version(self) -> "tuple[int, int, int]":
        """QEMU's (major, minor, micro), from its greeting."""
        with _Flight(_Query()):
            return self._src.qemu_version()

    def info(self, device: str, *, bandwidth_bytes: bool = False) -> Optional[BlockJobInfo]:
        """The job ``device`` names (QEMU's job id or its device), as libvirt answers.

        Parameters:
            device: QEMU's job id (its ``device`` field in ``query-block-jobs``), or a libvirt disk target or
                alias (libvirt's job ids name them).
            bandwidth_bytes: the bandwidth in bytes/s (libvirt's VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES)
                rather than MiB/s rounded up.

        Returns:
            A ``BlockJobInfo`` (``done`` never before QEMU says a mirror is ready), or None when there is no
            such job.

        Raises:
            AmbiguousJobError: the name matches two jobs at the same level.
            QmpConnectionError, QmpTimeoutError, QmpProtocolError, QemuError: QEMU could not be asked.
        """
        with _Flight(_Query()):
            t = self._src.info(device, bandwidth_bytes=bool(bandwidth_bytes))
        return None if t is None else _info(t)

    def last_ending(self, device: str) -> Optional[Ending]:
        """How the last job ``device`` names (a job id, or a libvirt disk target) ended, as this source heard it
        from QEMU's events since it was opened (see ``Ending``); None when no ending is known. One query, so an
        ending QEMU told before the call is known."""
        with _Flight(_Query()):
            t = self._src.last_ending(device)
        return None if t is None else Ending(*t)

    def progress(self, device: str) -> Optional[Progress]:
        """Reads the job ``device`` names once and says where it stands from this source's readings of it (see
        ``Progress``); None when there is no such job. The first call for a job can only say ``"measuring"`` (or
        ready, paused): call it again, a second or more apart. It only reads: it never changes a job."""
        with _Flight(_Query()):
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
        """Every job QEMU lists, in its order, as libvirt answers (see ``info``).

        Raises:
            QmpConnectionError, QmpTimeoutError, QmpProtocolError, QemuError: QEMU could not be asked.
        """
        with _Flight(_Query()):
            all_ = self._src.jobs(bandwidth_bytes=bool(bandwidth_bytes))
        return [_info(t) for t in all_]

    def wait(self, device: str, until: Until = "ready", timeout: Optional[float] = None) -> Outcome:
        """Waits until the job is ready (``"ready"``: a mirror in its mirroring phase) or has left QEMU's list
        (``"gone"``), woken by QEMU's events. The GIL is released meanwhile; Ctrl-C interrupts it.

        Parameters:
            device: the job, named as for ``info``.
            until: ``"ready"`` or ``"gone"``.
            timeout: seconds; None waits for ever. Passing first is the outcome ``TIMED_OUT``.

        Returns:
            An ``Outcome``: ``REACHED``, ``FAILED`` (QEMU's text in ``error``), ``CANCELLED``,
            ``GONE_BEFORE_READY`` or ``TIMED_OUT``, with the job's last state and the deciding event.

        Raises:
            SourceClosedError: the source was closed meanwhile, or the interpreter is exiting.
            KeyboardInterrupt: Ctrl-C, on the main thread.
            AmbiguousJobError: the name matches two jobs at the same level.
            TypeError, ValueError: a bad ``device``, ``until`` or ``timeout``.
            QmpConnectionError, QmpTimeoutError, QmpProtocolError, QemuError: QEMU could not be asked.
        """
        main = threading.current_thread() is threading.main_thread()
        return self._wait(device, until, _timeout(timeout), _native.CancelToken(), main)

    async def wait_async(self, device: str, until: Until = "ready", timeout: Optional[float] = None) -> Outcome:
        """``wait`` for asyncio: runs on a thread of its own and never blocks the loop (nor the loop's default
        executor). Cancelling the task raises CancelledError at once and ends the wait within 20 ms."""
        timeout_ = _timeout(timeout)
        token = _native.CancelToken()
        return await _off_loop(lambda: self._wait(device, until, timeout_, token, False), token.cancel)

    async def info_async(self, device: str, *, bandwidth_bytes: bool = False) -> Optional[BlockJobInfo]:
        """``info`` for asyncio, on a thread of its own: the loop goes on while QEMU answers (a hung QEMU holds
        the call up to the source's timeout, never the loop)."""
        return await _off_loop(lambda: self.info(device, bandwidth_bytes=bandwidth_bytes))

    async def jobs_async(self, *, bandwidth_bytes: bool = False) -> List[BlockJobInfo]:
        """``jobs`` for asyncio, on a thread of its own."""
        return await _off_loop(lambda: self.jobs(bandwidth_bytes=bandwidth_bytes))

    async def progress_async(self, device: str) -> Optional[Progress]:
        """``progress`` for asyncio, on a thread of its own."""
        return await _off_loop(lambda: self.progress(device))

    async def watch_progress(self, device: str, every: float = 1.0) -> AsyncIterator[Progress]:
        """``async for p in src.watch_progress(device)``: where the job stands (``Progress``), read every
        ``every`` seconds without blocking the loop, until no job ``device`` names is listed (then
        ``last_ending`` says how it ended), or the iteration is left. It follows the name: a name that lists no
        job yields nothing, a job that QEMU keeps listed once concluded (auto-dismiss off) is followed until it
        is dismissed, and a job started under the same name between two readings is followed on."""
        every_ = _timeout(every)
        if every_ is None or every_ <= 0:
            raise ValueError("every must be more than 0 seconds")
        while True:
            p = await self.progress_async(device)
            if p is None:
                return
            yield p
            await asyncio.sleep(every_)

    @classmethod
    async def connect(cls, address: Union[str, "os.PathLike[str]", Tuple[str, int]], *,
                      timeout: float = 10.0) -> "QmpSource":
        """``QmpSource(address, timeout=...)`` for asyncio: connects on a thread of its own, so the loop goes on
        while QEMU greets (or not, up to ``timeout``)."""
        return await _off_loop(lambda: cls(address, timeout=timeout), orphan=lambda src: src.close())

    async def __aenter__(self) -> "QmpSource":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await _off_loop(self.close)

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
                with _Flight(token):
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
        with _Flight(token):
            kind, error, last, event = self._src.wait(device, until, timeout, token, main)
        if token.cancelled:
            if _exiting:
                raise SourceClosedError("the interpreter is exiting")
            raise asyncio.CancelledError()
        return Outcome(
            OutcomeKind(kind),
            error,
            None if last is None else _info(last),
            None if event is None else json.loads(event),
        )


def _plain(o: Any) -> Any:
    """What ``json`` cannot write itself, as plain JSON values: any Mapping (qemu.qmp's ``Message``) as a dict,
    any other Sequence as a list."""
    if isinstance(o, Mapping):
        return dict(o)
    if isinstance(o, Sequence) and not isinstance(o, (str, bytes, bytearray)):
        return list(o)
    raise TypeError(f"a reply holds only JSON values, not {type(o).__name__}")


def _reply_text(reply: Any) -> str:
    if isinstance(reply, str):
        return reply
    if isinstance(reply, (bytes, bytearray, memoryview)):
        return bytes(reply).decode("utf-8")
    if isinstance(reply, (Mapping, Sequence)):
        return json.dumps(reply, default=_plain)
    raise TypeError("reply must be a str or bytes (the reply's JSON text), a Mapping (the reply, or qemu.qmp's "
                    f"Message) or a Sequence (its return list), not {type(reply).__name__}")


def translate(reply: Any, device: str, *, bandwidth_bytes: bool = False) -> Optional[BlockJobInfo]:
    """The rules applied to a ``query-block-jobs`` reply you already have.

    Parameters:
        reply: its JSON text (``str`` or ``bytes``), the whole reply (any Mapping: a dict, qemu.qmp's
            ``Message``) or its ``return`` list (any Sequence).
        device: the job, named as for ``QmpSource.info``.
        bandwidth_bytes: the bandwidth in bytes/s rather than MiB/s.

    Returns:
        A ``BlockJobInfo`` (without ``raw``), or None when no job is named so.

    Raises:
        ValueError: text that is not JSON (or not UTF-8).
        TypeError: a reply of another kind, or values JSON has no word for.
        QemuError: the reply is QEMU's error.
        AmbiguousJobError, QmpProtocolError: an ambiguous name, a reply that is not a job list.
    """
    t = _native.translate(_reply_text(reply), device, bandwidth_bytes=bool(bandwidth_bytes))
    if t is None:
        return None
    return _answer(*t)


def libvirt_info(domain: Any, disk: str, flags: int = 0) -> Optional[BlockJobInfo]:
    """libvirt's answer for a python-libvirt ``virDomain``'s ``disk``, corrected by the domain XML's ``<mirror>``
    as the drop-in's ``native`` source does, for programs that cannot preload the library: a copy or an active
    commit whose ``<mirror>`` is not ``ready='yes'`` is never reported done. None when the disk has no job."""
    from ._libvirt import corrected

    return corrected(domain, disk, flags)
