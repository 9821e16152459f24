"""A real qemu-storage-daemon per test, with a control connection of the test's own (tests/common/mod.rs's Qsd,
in Python): `top` (8 MiB of data) and `dst` (empty, the same size), monitors ctl.sock and lib.sock."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from typing import Any, Dict, Iterator, List, Optional

import pytest

MIB = 1 << 20
IMAGE = 8 * MIB
STACK = os.environ.get("BJI_STACK", "host")


def run(*args: str) -> None:
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


class Control:
    """The test's own QMP connection: starts and ends jobs, and hears QEMU's events."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.reader = self.sock.makefile("rb")
        self.events: List[Dict[str, Any]] = []
        assert "QMP" in self._read()
        self.ok("qmp_capabilities")

    def _read(self) -> Dict[str, Any]:
        line = self.reader.readline()
        assert line, "the control connection closed"
        return json.loads(line)  # type: ignore[no-any-return]

    def cmd(self, name: str, **args: Any) -> Dict[str, Any]:
        self.sock.sendall(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
        while True:
            v = self._read()
            if "event" in v:
                self.events.append(v)
                continue
            return v

    def ok(self, name: str, **args: Any) -> Any:
        v = self.cmd(name, **args)
        assert "return" in v, f"{name} {args}: {v}"
        return v["return"]

    def jobs(self) -> List[Dict[str, Any]]:
        return self.ok("query-block-jobs")  # type: ignore[no-any-return]

    def wait_event(self, name: str, timeout: float = 30) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, e in enumerate(self.events):
                if e["event"] == name:
                    return self.events.pop(i)
            assert time.monotonic() < deadline, f"no {name} within {timeout} s"
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                v = self._read()
            except (socket.timeout, TimeoutError):
                continue
            finally:
                self.sock.settimeout(30)
            if "event" in v:
                self.events.append(v)

    def wait_gone(self, job: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while any(j["device"] == job for j in self.jobs()):
            assert time.monotonic() < deadline, f"{job} still listed"
            time.sleep(0.02)


class Qsd:
    def __init__(self, directory: str) -> None:
        self.dir = directory
        top, dst = self.path("top.qcow2"), self.path("dst.qcow2")
        run("qemu-img", "create", "-q", "-f", "qcow2", top, str(IMAGE))
        run("qemu-io", "-c", f"write -P 0x33 0 {IMAGE}", top)
        run("qemu-img", "create", "-q", "-f", "qcow2", dst, str(IMAGE))
        args = ["qemu-storage-daemon"]
        for mon in ("ctl", "lib"):
            args += ["--chardev", f"socket,id={mon},path={self.path(mon + '.sock')},server=on,wait=off",
                     "--monitor", f"chardev={mon}"]
        for node, image in (("top", top), ("dst", dst)):
            args += ["--blockdev", f"driver=file,node-name={node}-file,filename={image}",
                     "--blockdev", f"driver=qcow2,node-name={node},file={node}-file"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not (os.path.exists(self.path("ctl.sock")) and os.path.exists(self.path("lib.sock"))):
            assert time.monotonic() < deadline and self.proc.poll() is None, "qemu-storage-daemon did not start"
            time.sleep(0.01)
        self.ctl = Control(self.path("ctl.sock"))
        self.lib = self.path("lib.sock")

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def mirror(self, speed: int, job: str = "m", target: str = "dst", **extra: Any) -> None:
        """A copy of `top` throttled to `speed`: one burst, then `offset == len`, not ready, until ready."""
        self.ctl.ok("blockdev-mirror", **{"job-id": job, "device": "top", "target": target, "sync": "full",
                                          "speed": speed, **extra})
        deadline = time.monotonic() + 10
        while not any(j["device"] == job and j["len"] > 0 for j in self.ctl.jobs()):
            assert time.monotonic() < deadline, "the job was never sized"
            time.sleep(0.002)

    def stop(self) -> None:
        self.ctl.reader.close()
        self.ctl.sock.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def qsd() -> Iterator[Qsd]:
    with tempfile.TemporaryDirectory(prefix="bji-py-") as d:
        q = Qsd(d)
        try:
            yield q
        finally:
            q.stop()


def listened(listening: threading.Event, t: threading.Thread) -> bool:
    """Whether the wait on ``t`` said it listens, within 30 s; False at once if the thread ended first."""
    deadline = time.monotonic() + 30
    while not listening.wait(0.01):
        if not t.is_alive() or time.monotonic() > deadline:
            return listening.is_set()
    return True


def wait_in_thread(src: Any, device: str, until: str) -> "tuple[threading.Thread, List[Any]]":
    """`src.wait(device, until, timeout=60)` started on a thread of its own: the thread, and a list that gets the
    wait's outcome, or the exception it raised."""
    got: List[Any] = []

    def run() -> None:
        try:
            got.append(src.wait(device, until, timeout=60))
        except Exception as e:  # noqa: BLE001 - for the test to look at
            got.append(e)

    t = threading.Thread(target=run)
    t.start()
    return t, got


@contextlib.contextmanager
def wait_listening(job: str) -> Iterator[threading.Event]:
    """An event set once the library says, through Python's logging, that a wait for the job whose QEMU job id
    is ``job`` listens to QEMU's events (its DEBUG record "wait: waiting for job"): what a test waits for before
    ending the job under the wait, instead of sleeping."""
    import logging
    import sys

    import blockjobinfo

    # With BLOCKJOBINFO_LOG set, the library writes its records to stderr, not to logging: said at once.
    if os.environ.get("BLOCKJOBINFO_LOG") and not sys.flags.ignore_environment:
        raise RuntimeError("wait_listening reads the library's records through logging: unset BLOCKJOBINFO_LOG")
    listening = threading.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith(f"wait: waiting for job '{job}'"):
                listening.set()

    logger = logging.getLogger("blockjobinfo.wait")
    handler, level = Seen(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    blockjobinfo.reset_logging()
    try:
        yield listening
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        blockjobinfo.reset_logging()


def stack_says(what: str) -> str:
    """Messages name the stack the test ran on."""
    return f"{STACK}: {what}"


def job(offset: int, length: int, ready: Optional[bool], **extra: Any) -> Dict[str, Any]:
    j: Dict[str, Any] = {"type": "mirror", "device": "m", "offset": offset, "len": length, "speed": 0,
                         "busy": False, "paused": False, "io-status": "ok", "status": "running"}
    if ready is not None:
        j["ready"] = ready
    j.update(extra)
    return j


class Peer:
    """A QMP peer for the races real QEMU cannot be made to hit on cue: it greets as QEMU 8.2 does, answers
    ``query-block-jobs`` after ``delay`` seconds, and drops every client when told (``drop``)."""

    def __init__(self, directory: str, delay: float = 0.0) -> None:
        self.path = os.path.join(directory, "peer.sock")
        self.delay = delay
        self.clients: list = []
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(self.path)
        self.server.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.server.accept()
            except OSError:
                return
            self.clients.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        f = c.makefile("rwb")
        try:
            f.write(b'{"QMP": {"version": {"qemu": {"major": 8, "minor": 2, "micro": 0}, "package": ""}, '
                    b'"capabilities": []}}\r\n')
            f.flush()
            for line in f:
                m = json.loads(line)
                r: dict = {"return": {}}
                if m.get("execute") == "query-block-jobs":
                    time.sleep(self.delay)
                    r = {"return": [{"type": "mirror", "device": "m", "len": 100, "offset": 1, "speed": 0,
                                     "busy": True, "paused": False, "io-status": "ok", "ready": False,
                                     "status": "running", "auto-finalize": True, "auto-dismiss": True}]}
                elif m.get("execute") != "qmp_capabilities":
                    r = {"return": []}
                if "id" in m:
                    r["id"] = m["id"]
                f.write(json.dumps(r).encode() + b"\r\n")
                f.flush()
        except (OSError, ValueError):
            pass

    def drop(self) -> None:
        for c in self.clients:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.drop()
        self.server.close()
