"""Bad input is a clear exception, never a crash; memory stays flat over many calls."""

import json
import os
import resource
import socket
import tempfile
import threading
import tracemalloc

import pytest

import blockjobinfo
from blockjobinfo import QmpSource, translate
from conftest import job, listened, wait_in_thread, wait_listening


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
        # Too far away to be a point in time: an error, never a panic.
        with pytest.raises(ValueError, match="at most"):
            src.wait("m", "ready", timeout=1e19)
    with pytest.raises(ValueError, match="at most"):
        QmpSource(qsd.lib, timeout=1e19)
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
    """The process's peak resident set (KiB): a leak raises it, a steady state does not. (No /proc needed: the
    stacks' roots run without one.)"""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def test_memory_is_flat_over_100000_calls(qsd):
    """100,000 calls after a warm-up: 10,000 `info()` and 3,334 `jobs()` on the real daemon (each a QMP round
    trip), and 86,666 `translate()` (the same conversions, and errors, without the I/O); then neither Python's
    allocations (tracemalloc) nor the peak RSS grew."""
    reply = json.dumps({"return": [job(5, 10, False)]})
    with QmpSource(qsd.lib) as src:
        qsd.mirror(64 * 1024)

        def calls(n):
            for i in range(n):
                if i % 10 == 0:
                    assert src.info("m") is not None
                    if i % 30 == 0:
                        src.jobs()
                else:
                    assert translate(reply, "m").cur == 5
                    if i % 100 == 1:
                        try:
                            translate("{", "m")
                        except ValueError:
                            pass

        calls(5000)  # warm up
        tracemalloc.start()
        before_py = tracemalloc.take_snapshot()
        before_rss = rss_kib()
        calls(100_000)
        after_rss = rss_kib()
        after_py = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(s.size_diff for s in after_py.compare_to(before_py, "filename"))
        assert grown < 64 * 1024, f"Python objects grew {grown} bytes"
        assert after_rss - before_rss < 1024, f"peak RSS {before_rss} -> {after_rss} KiB"


def test_a_closed_source_ends_a_wait(qsd):
    src = QmpSource(qsd.lib)
    qsd.mirror(64 * 1024)
    with wait_listening("m") as listening:
        t, ended = wait_in_thread(src, "m", "ready")
        assert listened(listening, t), f"the wait never listened: {ended}"
    src.close()
    t.join(10)
    assert ended and isinstance(ended[0], blockjobinfo.SourceClosedError) and "closed" in str(ended[0]), ended



def test_exceptions_are_the_packages_and_pickle():
    import pickle

    try:
        QmpSource("/nonexistent/qmp.sock", timeout=1)
    except blockjobinfo.QmpConnectionError as e:
        assert type(e).__module__ == "blockjobinfo"
        again = pickle.loads(pickle.dumps(e))
        assert type(again) is blockjobinfo.QmpConnectionError and str(again) == str(e)
    else:
        raise AssertionError("connected to nothing")
    assert issubclass(blockjobinfo.QmpTimeoutError, blockjobinfo.BlockJobInfoError)
