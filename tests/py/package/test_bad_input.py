"""Bad input is a clear exception, never a crash; memory stays flat over many calls."""

import os
import socket
import tempfile
import threading
import tracemalloc

import pytest

import blockjobinfo
from blockjobinfo import QmpSource
from conftest import MIB


def test_bad_arguments(qsd):
    with QmpSource(qsd.lib) as src:
        with pytest.raises(TypeError, match="device must be a str"):
            src.info(7)
        with pytest.raises(ValueError, match="device"):
            src.info("")
        with pytest.raises(ValueError, match="not negative"):
            src.wait("m", "ready", timeout=-1)
        with pytest.raises(ValueError, match='"ready" or "gone"'):
            src.wait("m", "done")
        with pytest.raises(TypeError):
            src.wait("m", 1)
    with pytest.raises(TypeError):
        QmpSource(b"/x")
    with pytest.raises(ValueError):
        QmpSource(qsd.lib, timeout=-2)


def test_no_such_socket_and_a_socket_that_is_not_qmp():
    with pytest.raises(blockjobinfo.QmpConnectionError, match="cannot connect"):
        QmpSource("/nonexistent/qmp.sock", timeout=1)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "not-qmp.sock")
        server = socket.socket(socket.AF_UNIX)
        server.bind(path)
        server.listen(1)

        def garbage():
            c, _ = server.accept()
            c.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            c.recv(100)
            c.close()

        t = threading.Thread(target=garbage)
        t.start()
        with pytest.raises(blockjobinfo.BlockJobInfoError):
            QmpSource(path, timeout=2)
        t.join(10)
        server.close()


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon")


def test_memory_is_flat_over_100000_calls(qsd):
    with QmpSource(qsd.lib) as src:
        qsd.mirror(64 * 1024)
        for _ in range(2000):  # warm up
            src.info("m")
        tracemalloc.start()
        before_py = tracemalloc.take_snapshot()
        before_rss = rss_kib()
        for i in range(100_000):
            info = src.info("m")
            if i % 3 == 0:
                src.jobs()
        after_rss = rss_kib()
        after_py = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(s.size_diff for s in after_py.compare_to(before_py, "filename"))
        assert info is not None
        assert grown < 64 * 1024, f"Python objects grew {grown} bytes"
        assert after_rss - before_rss < 1024, f"RSS {before_rss} -> {after_rss} KiB"


def test_a_closed_source_ends_a_wait(qsd):
    src = QmpSource(qsd.lib)
    qsd.mirror(64 * 1024)
    ended = []

    def wait():
        try:
            src.wait("m", "ready", timeout=60)
        except blockjobinfo.SourceClosedError as e:
            ended.append(e)

    t = threading.Thread(target=wait)
    t.start()
    import time

    time.sleep(0.3)
    src.close()
    t.join(10)
    assert ended and "closed" in str(ended[0])

