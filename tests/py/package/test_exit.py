"""The interpreter exits cleanly with the library busy: waits in flight (a sync wait on a daemon thread, an
asyncio wait whose task asyncio.run cancels, Ctrl-C raised in the main coroutine), a query whose reply comes
while Python finalizes, and library threads that log while the connection is lost. Before, Python < 3.14 stopped
a returning thread with pthread_exit inside a Rust frame, and the process died of SIGABRT (14 runs of 20); a
library thread logging into `logging` could crash a finalizing interpreter or deadlock on a monitor's lock."""

import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

from conftest import Peer, stack_says

RUNS = 100

PROGRAM = r"""
import asyncio, atexit, sys, threading

@atexit.register  # before the package's own handler is registered, so it runs after it
def after_the_packages_handler():
    print("in flight at exit:", len(sys.modules["blockjobinfo"]._in_flight), flush=True)

import blockjobinfo

src = blockjobinfo.QmpSource(sys.argv[1])
ctrl_c = sys.argv[2] == "ctrl-c"

def in_flight(n):
    # The waits registered for the exit, then one round trip: each is inside the library by then.
    while len(blockjobinfo._in_flight) < n:
        threading.Event().wait(0.001)
    assert src.info("m") is not None

def sync_wait():
    try:
        src.wait("m", "ready")
    except blockjobinfo.SourceClosedError:
        pass  # cancelled by the exit: said, not a traceback

threading.Thread(target=sync_wait, daemon=True).start()

async def main():
    task = asyncio.ensure_future(src.wait_async("m", "gone"))
    await asyncio.get_running_loop().run_in_executor(None, in_flight, 2)
    if ctrl_c:
        raise KeyboardInterrupt
    return task

try:
    asyncio.run(main())
except KeyboardInterrupt:
    pass
# Exits with both waits in flight, and the source never closed.
"""


def test_exit_with_waits_in_flight_is_clean_every_time(qsd):
    # Never ready, never gone: a mirror held at 1 KiB/s.
    qsd.mirror(1024)

    def one(i):
        how = "ctrl-c" if i % 2 else "return"
        done = subprocess.run([sys.executable, "-c", PROGRAM, qsd.lib, how], capture_output=True, text=True,
                              timeout=60)
        # The package's atexit handler cancelled both waits and saw them leave the library.
        if done.returncode != 0 or done.stdout != "in flight at exit: 0\n" or done.stderr:
            return f"run {i} ({how}): exit {done.returncode}: {done.stdout!r} {done.stderr[-2000:]}"
        return None

    # Four at a time: their interpreters start while another holds the monitor (QEMU serves one client at once).
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        failures = [f for f in pool.map(one, range(RUNS)) if f is not None]
    assert not failures, stack_says(f"{len(failures)} of {RUNS} runs failed; first: {failures[0]}")
    # The job was only read: still there, still running.
    assert [j["status"] for j in qsd.ctl.jobs()] == ["running"]


# The interpreter is held in finalization (a finalizer that takes its time, as a flush may) while the library
# returns into it.
SLOW_FINALIZER = """
import os, time
class Slow:
    def __init__(self): self.me = self; self.time = time; self.flag = os.environ.get("FINALIZING_FLAG")
    def __del__(self):
        if self.flag:
            open(self.flag, "w").close()
        self.time.sleep(2.0)
Slow()
"""


def drop_when_flagged(peer, flag, args, env=None):
    """Runs ``python -c *args``; once it made ``flag`` (a file), the peer drops every client. Its exit status,
    stdout and stderr; a program that never gets there, or hangs after, fails the test (and is killed)."""
    proc = None
    try:
        proc = subprocess.Popen([sys.executable, "-c", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 30
        while not os.path.exists(flag):
            assert time.monotonic() < deadline and proc.poll() is None, f"the program never made {flag}"
            time.sleep(0.01)
        peer.drop()
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(stack_says(f"hung: {out} {err[-2000:]}"))
        return proc.returncode, out, err
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        peer.close()


def run_program(program: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", program, *args], capture_output=True, text=True, timeout=60)


def test_a_query_that_returns_while_python_finalizes_is_parked_not_crashed():
    """A daemon thread's ``jobs()`` whose reply comes (1 s) after the exit gave up waiting for it (0.1 s) and
    while Python finalizes: PyO3 parks the thread, and the process exits 0. With the module linked to zig's
    own unwinder, glibc's pthread_exit unwind crashed here (SIGSEGV) every time."""
    program = """
import sys, threading, time
import blockjobinfo
blockjobinfo._EXIT_JOIN_SECONDS = 0.1
src = blockjobinfo.QmpSource(sys.argv[1], timeout=30)
threading.Thread(target=src.jobs, daemon=True).start()
while not blockjobinfo._in_flight:
    time.sleep(0.001)
""" + SLOW_FINALIZER
    with tempfile.TemporaryDirectory() as d:
        peer = Peer(d, delay=1.0)
        try:
            for i in range(3):
                done = run_program(program, peer.path)
                assert done.returncode == 0, stack_says(f"run {i}: exit {done.returncode}: {done.stderr[-2000:]}")
        finally:
            peer.close()


def test_library_threads_that_log_never_run_python_in_a_finalizing_interpreter():
    """The connection is lost while Python finalizes, with ``logging`` at DEBUG: the library's threads log it,
    and exit is still 0 (their records are dropped once the exit began, never handed to a finalizing
    interpreter)."""
    program = """
import builtins, logging, sys
import blockjobinfo
logging.basicConfig(level=logging.DEBUG)
src = blockjobinfo.QmpSource(sys.argv[1])
src.jobs()
builtins.keep = src  # outlives the main module's teardown
""" + SLOW_FINALIZER
    with tempfile.TemporaryDirectory() as d:
        peer = Peer(d)
        flag = os.path.join(d, "finalizing")
        # Python is in its 2 s finalizer when the peer drops the connection.
        code, out, err = drop_when_flagged(peer, flag, [program, peer.path], {"FINALIZING_FLAG": flag})
    assert code == 0, stack_says(f"exit {code}: {err[-2000:]}")


def test_a_handler_that_collects_garbage_does_not_deadlock_the_library():
    """A ``logging`` handler that runs the cyclic GC, which finalizes a forgotten source (its ``__del__`` closes
    it, taking its monitor's lock), while the library logs a lost connection: the record is handled on the
    forwarding thread, which holds no library lock, so the program goes on and exits 0. Logging inline, from the
    library's own thread and under the lock, it hung for ever."""
    program = """
import gc, logging, sys, threading
import blockjobinfo

heard = threading.Event()
watching = False

class Collect(logging.Handler):
    def emit(self, record):
        gc.collect()
        if watching and "connection dropped" in record.getMessage():
            heard.set()

logger = logging.getLogger("blockjobinfo")
logger.addHandler(Collect())
logger.setLevel(logging.DEBUG)

class Holder:
    def __init__(self, path):
        self.src = blockjobinfo.QmpSource(path)
        self.me = self  # a cycle: garbage only the collector frees

h = Holder(sys.argv[1])
h.src.jobs()
# Its records so far handled (a collection now would find nothing to free), then it is garbage.
assert blockjobinfo._native.flush_logging(10.0)
del h
gc.disable()
watching = True
with open(sys.argv[2], "w") as f:
    f.write("ready")
# The library's drain thread logs the drop; its record handled (the collection run) tells the program lives.
print("alive" if heard.wait(20) else "no record of the drop", flush=True)
"""
    with tempfile.TemporaryDirectory() as d:
        peer = Peer(d)
        flag = os.path.join(d, "ready")
        code, out, err = drop_when_flagged(peer, flag, [program, peer.path, flag])
    assert code == 0 and out == "alive\n", stack_says(f"exit {code}: {out} {err[-2000:]}")


def test_a_forked_child_inherits_no_call_in_flight(qsd):
    """A child forked while the parent waits has none of the parent's threads: nothing of theirs is in flight in
    it, and none of the parent's log records is owed in it, so its exit waits for nothing (it waited the whole
    5 s, then 0.5 s for records that could never come)."""
    qsd.mirror(1024)
    program = """
import logging, os, sys, threading, time
import blockjobinfo
logging.getLogger("blockjobinfo").setLevel(logging.DEBUG)
logging.getLogger("blockjobinfo").addHandler(logging.NullHandler())
src = blockjobinfo.QmpSource(sys.argv[1])
threading.Thread(target=lambda: src.wait("m", "ready"), daemon=True).start()
while not blockjobinfo._in_flight:
    time.sleep(0.001)
pid = os.fork()
if pid == 0:
    print("child in flight:", len(blockjobinfo._in_flight), "records owed:",
          not blockjobinfo.flush_logging(0), flush=True)
    sys.exit(0)
_, status = os.waitpid(pid, 0)
print("parent in flight:", len(blockjobinfo._in_flight), "child status:", status, flush=True)
src.close()
"""
    done = run_program(program, qsd.lib)
    assert done.returncode == 0, stack_says(done.stderr[-2000:])
    assert done.stdout.splitlines() == ["child in flight: 0 records owed: False", "parent in flight: 1 child status: 0"], \
        stack_says(done.stdout + done.stderr[-2000:])
