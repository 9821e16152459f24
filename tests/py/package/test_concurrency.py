"""A wait never blocks another call: threads sharing one source, asyncio, and Ctrl-C."""

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import blockjobinfo
from blockjobinfo import OutcomeKind, QmpSource
from conftest import IMAGE, MIB, stack_says


def test_eight_threads_share_one_source_while_one_waits(qsd):
    with QmpSource(qsd.lib) as src:
        qsd.mirror(4 * MIB)
        answers, errors = [], []
        stop = threading.Event()

        def reader():
            try:
                while not stop.is_set():
                    info = src.info("m")
                    assert info is not None and (info.done == bool(info.raw.ready)), info
                    answers.append(info)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=reader) for _ in range(7)]
        for t in threads:
            t.start()
        out = src.wait("m", "ready", timeout=60)  # the eighth thread
        counted = len(answers)
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(30)
        assert not errors, errors
        assert out.kind is OutcomeKind.REACHED
        assert counted > 70, stack_says(f"only {counted} answers while the wait waited")


def test_wait_async_leaves_the_loop_running(qsd):
    async def main():
        with QmpSource(qsd.lib) as src:
            qsd.mirror(4 * MIB)
            ticks = 0

            async def tick():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            ticker = asyncio.create_task(tick())
            started = time.monotonic()
            out = await src.wait_async("m", "ready", timeout=60)
            waited = time.monotonic() - started
            ticker.cancel()
            assert out.kind is OutcomeKind.REACHED
            # The copy takes seconds; the loop ticked all along (at least a tick per 50 ms of the wait).
            assert waited > 1 and ticks > waited * 20, stack_says(f"{ticks} ticks in {waited:.1f} s")

            # A cancelled wait ends, and the source goes on.
            qsd.ctl.ok("block-job-cancel", device="m")
            qsd.ctl.wait_gone("m")
            qsd.mirror(64 * 1024, job="n")
            task = asyncio.create_task(src.wait_async("n", "ready"))
            # Its thread started (polled: a loaded machine may take a while to start it).
            deadline = time.monotonic() + 30
            while waiting_threads() != 1:
                assert time.monotonic() < deadline, stack_says(f"{waiting_threads()} waiting threads")
                await asyncio.sleep(0.01)
            task.cancel()
            try:
                await task
                raise AssertionError("not cancelled")
            except asyncio.CancelledError:
                pass
            # The wait itself ended (the copy would take two minutes to be ready), and the source goes on.
            deadline = time.monotonic() + 1
            while waiting_threads():
                assert time.monotonic() < deadline, stack_says("the cancelled wait goes on")
                await asyncio.sleep(0.01)
            assert src.info("n") is not None

    asyncio.run(main())


def waiting_threads():
    return sum(t.name == "blockjobinfo-call" for t in threading.enumerate())


def test_many_async_waits_leave_the_default_executor_free(qsd):
    """Twelve waits at once (more than the default executor's workers on this machine) all end, and the default
    executor answers meanwhile."""

    async def main():
        with QmpSource(qsd.lib) as src:
            qsd.mirror(4 * MIB)
            loop = asyncio.get_running_loop()
            waits = [asyncio.create_task(src.wait_async("m", "ready", timeout=60)) for _ in range(12)]
            # All twelve waiting (their threads started), not a guessed delay: the executor is then asked while
            # every wait holds what it holds.
            deadline = time.monotonic() + 30
            while waiting_threads() != 12:
                assert time.monotonic() < deadline, stack_says(f"{waiting_threads()} waiting threads")
                await asyncio.sleep(0.01)
            started = time.monotonic()
            assert await loop.run_in_executor(None, lambda: 42) == 42
            # Twelve waits that held its workers would keep it for the copy's seconds; a free one answers in
            # milliseconds (2.5 s: more than 5x what a loaded machine took here).
            assert time.monotonic() - started < 2.5, stack_says("the default executor was busy")
            outcomes = await asyncio.gather(*waits)
            assert all(o.kind is OutcomeKind.REACHED for o in outcomes), outcomes

    asyncio.run(main())


def test_ctrl_c_interrupts_a_wait(qsd):
    qsd.mirror(64 * 1024)
    script = textwrap.dedent(
        f"""
        import sys, time
        from blockjobinfo import QmpSource
        src = QmpSource({qsd.lib!r})
        print("waiting", flush=True)
        try:
            src.wait("m", "ready", timeout=60)
        except KeyboardInterrupt:
            print("interrupted", time.monotonic(), flush=True)
            sys.exit(3)
        """
    )
    # The library's debug log (on stderr) says when the wait has begun: Ctrl-C comes inside it, not before.
    env = dict(os.environ, BLOCKJOBINFO_LOG="debug")
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout.readline().strip() == "waiting"
    said = []
    while not any("wait: waiting for job 'm'" in line for line in said):
        line = child.stderr.readline()
        assert line, stack_says(f"the wait never began: {said}")
        said.append(line)
    sent = time.monotonic()
    os.kill(child.pid, signal.SIGINT)
    line = child.stdout.readline().split()
    assert child.wait(30) == 3, (line, said, child.stderr.read())
    assert line[0] == "interrupted"
    took = float(line[1]) - sent
    print(stack_says(f"Ctrl-C ended the wait in {took * 1000:.1f} ms"))
    # The wait looks for Ctrl-C every 20 ms; one that did not would run to its 60 s. 1 s is more than 5x the
    # time taken on a loaded machine here.
    assert took < 1.0, stack_says(f"Ctrl-C took {took:.3f} s")


def test_asyncio_connects_reads_and_follows_a_job_without_blocking_the_loop(qsd):
    """``async with await QmpSource.connect(...)``, ``info_async``, ``jobs_async`` and ``async for`` over a
    job's progress until it has left QEMU's list (cancelled on the test's own connection); and a connect to a
    peer that never greets holds its task for its timeout while the loop goes on (a blocked loop ticks 0 times;
    about 40 measured)."""
    import socket
    import tempfile

    async def main():
        async with await blockjobinfo.QmpSource.connect(pathlib.Path(qsd.lib)) as src:
            assert await src.info_async("m") is None
            qsd.mirror(64 * 1024)
            assert [j.raw.device for j in await src.jobs_async()] == ["m"]
            seen = []
            async for p in src.watch_progress("m", every=0.05):
                seen.append(p)
                if len(seen) == 3:
                    qsd.ctl.ok("block-job-cancel", device="m")
            # 8 MiB copied in its first burst, 64 KiB/s after: never ready here, and read as QEMU lists it
            # (measuring, or converging with nothing left when the burst took it all; finishing once cancelled).
            assert len(seen) >= 3 and {p.state for p in seen} <= {"measuring", "converging", "finishing"}, \
                stack_says(str(seen))
            assert all(p.len == IMAGE and p.speed == 64 * 1024 for p in seen), stack_says(str(seen))
            ending = src.last_ending("m")
            assert ending is not None and ending.outcome == "canceled", stack_says(str(ending))
        assert src.closed
        with tempfile.TemporaryDirectory() as d:
            path = f"{d}/mute.sock"
            server = socket.socket(socket.AF_UNIX)
            server.bind(path)
            server.listen(1)
            ticks = 0

            async def tick():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            ticker = asyncio.ensure_future(tick())
            try:
                with pytest.raises(TimeoutError):
                    await blockjobinfo.QmpSource.connect(path, timeout=0.5)
            finally:
                ticker.cancel()
                server.close()
            assert ticks >= 5, stack_says(f"the loop ticked {ticks} times during the connect")

    asyncio.run(main())


def test_a_cancelled_connect_closes_the_source_it_made():
    """A connect whose task is cancelled while QEMU has not greeted yet goes on on its thread; once the peer
    greets, the source it made is closed there (the peer sees its connection end), not left to the collector,
    which would warn that it was never closed. The peer is scripted: it greets when the test says."""
    import gc
    import json
    import socket
    import tempfile
    import warnings

    accepted, greet, ended = threading.Event(), threading.Event(), threading.Event()

    def peer(server):
        c, _ = server.accept()
        accepted.set()
        greet.wait(30)
        f = c.makefile("rwb")
        f.write(b'{"QMP": {"version": {"qemu": {"major": 8, "minor": 2, "micro": 0}, "package": ""}, '
                b'"capabilities": []}}\r\n')
        f.flush()
        for line in f:
            m = json.loads(line)
            f.write(json.dumps({"return": {}, **({"id": m["id"]} if "id" in m else {})}).encode() + b"\r\n")
            f.flush()
        ended.set()  # the client closed its end

    async def main(path):
        task = asyncio.ensure_future(blockjobinfo.QmpSource.connect(path, timeout=30))
        while not accepted.is_set():
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        greet.set()
        deadline = time.monotonic() + 10
        while waiting_threads():
            assert time.monotonic() < deadline, stack_says("the connect's thread goes on")
            await asyncio.sleep(0.01)

    with tempfile.TemporaryDirectory() as d:
        server = socket.socket(socket.AF_UNIX)
        server.bind(f"{d}/slow.sock")
        server.listen(1)
        t = threading.Thread(target=peer, args=(server,), daemon=True)
        t.start()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            asyncio.run(main(f"{d}/slow.sock"))
            gc.collect()
        server.close()
    assert ended.wait(10), stack_says("the abandoned source was never closed")
    assert not [w for w in caught if "never closed" in str(w.message)], [str(w.message) for w in caught]
