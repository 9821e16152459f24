"""The package's shape as a Python user meets it: result types, exceptions under Python's own bases with what a
caller acts on, the inputs it takes, and its conveniences."""

import dataclasses
import errno
import gc
import json
import os
import pathlib
import pickle
import socket
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Mapping

import pytest

import blockjobinfo
from blockjobinfo import BlockJobInfo, QmpSource, as_libvirt_dict, translate
from conftest import MIB, Peer, job, stack_says


def test_results_are_frozen_and_an_answer_equals_itself_however_it_came(qsd):
    with QmpSource(qsd.lib) as src:
        qsd.mirror(64 * 1024)
        reply = {"return": qsd.ctl.jobs()}
        live = src.info("m")
    assert live is not None and live.raw is not None and live.raw.device == "m"
    offline = translate(reply, "m")
    assert offline is not None and offline.raw is None
    # The same numbers with QEMU's fields and without: equal, `raw` aside.
    again = BlockJobInfo(live.type, live.bandwidth, live.cur, live.end)
    assert again == live, stack_says(f"{again} != {live}")
    with pytest.raises(dataclasses.FrozenInstanceError):
        live.cur = 0  # type: ignore[misc]
    for kind in (blockjobinfo.BlockJobInfo, blockjobinfo.RawJob, blockjobinfo.Outcome, blockjobinfo.Progress,
                 blockjobinfo.Ending, blockjobinfo.JobEvent):
        assert dataclasses.is_dataclass(kind) and kind.__dataclass_params__.frozen, kind


def test_as_libvirt_dict_is_python_libvirts_shape():
    info = translate([job(5, 10, False, speed=3 * MIB + 1)], "m")
    d = as_libvirt_dict(info)
    assert d == {"type": 2, "bandwidth": 4, "cur": 5, "end": 10}
    # Plain ints, as python-libvirt gives them (JobType is an IntEnum).
    assert all(type(v) is int for v in d.values()), d
    assert info.as_libvirt_dict() == d
    # No job: python-libvirt's {} (not None).
    assert as_libvirt_dict(translate([], "m")) == {}


def test_a_connection_error_is_a_connection_error_with_the_systems_errno():
    with pytest.raises(ConnectionError) as no_file:
        QmpSource("/nonexistent/qmp.sock", timeout=1)
    assert isinstance(no_file.value, blockjobinfo.QmpConnectionError)
    assert isinstance(no_file.value, OSError) and no_file.value.errno == errno.ENOENT, repr(no_file.value)
    assert "cannot connect" in str(no_file.value)
    with tempfile.TemporaryDirectory() as d:
        # A socket file nobody listens on: refused.
        path = os.path.join(d, "gone.sock")
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        s.close()
        with pytest.raises(blockjobinfo.QmpConnectionError) as refused:
            QmpSource(path, timeout=1)
        assert refused.value.errno == errno.ECONNREFUSED, repr(refused.value)
        # Pickled and back, with its errno and message.
        again = pickle.loads(pickle.dumps(refused.value))
        assert type(again) is blockjobinfo.QmpConnectionError
        assert (again.errno, str(again)) == (errno.ECONNREFUSED, str(refused.value))


def test_a_peer_that_never_greets_is_a_timeout_error():
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "mute.sock")
        server = socket.socket(socket.AF_UNIX)
        server.bind(path)
        server.listen(1)
        try:
            with pytest.raises(TimeoutError) as mute:
                QmpSource(path, timeout=0.3)
        finally:
            server.close()
    assert isinstance(mute.value, blockjobinfo.QmpTimeoutError) and mute.value.errno == errno.ETIMEDOUT


def test_qemus_error_carries_its_class_and_desc_and_an_ambiguous_name_its_candidates():
    with pytest.raises(blockjobinfo.QemuError) as qemu:
        translate({"error": {"class": "GenericError", "desc": "no such thing"}}, "m")
    assert (qemu.value.error_class, qemu.value.desc) == ("GenericError", "no such thing")
    again = pickle.loads(pickle.dumps(qemu.value))
    assert (again.error_class, again.desc, str(again)) == ("GenericError", "no such thing", str(qemu.value))
    two = [job(1, 2, False, device="copy-vda-libvirt-1-format"), job(1, 2, None, device="commit-vda-libvirt-2",
                                                                       type="commit")]
    with pytest.raises(LookupError) as ambiguous:
        translate(two, "vda")
    e = ambiguous.value
    assert isinstance(e, blockjobinfo.AmbiguousJobError)
    assert e.device == "vda" and sorted(e.candidates) == ["commit-vda-libvirt-2", "copy-vda-libvirt-1-format"], e
    assert pickle.loads(pickle.dumps(e)).candidates == e.candidates


class Message(Mapping):
    """A Mapping that is not a dict, as qemu.qmp's ``Message`` is."""

    def __init__(self, value):
        self._value = value

    def __getitem__(self, key):
        return self._value[key]

    def __iter__(self):
        return iter(self._value)

    def __len__(self):
        return len(self._value)


def test_translate_takes_text_bytes_mappings_and_sequences():
    reply = {"return": [job(5, 10, False)]}
    want = translate(reply, "m")
    assert want is not None and (want.cur, want.end) == (5, 10)
    text = json.dumps(reply)
    for given in (text, text.encode(), bytearray(text.encode()), memoryview(text.encode()), Message(reply),
                  {"return": (Message(job(5, 10, False)),)}, tuple(reply["return"])):
        assert translate(given, "m") == want, given
    from qemu.qmp import Message as QmpMessage  # the real one, from the wheelhouse

    assert translate(QmpMessage(reply), "m") == want
    with pytest.raises(ValueError):
        translate(b"\xff\xfe", "m")
    with pytest.raises(TypeError, match="str or bytes"):
        translate(42, "m")
    with pytest.raises(TypeError, match="JSON values"):
        translate([{"device": object()}], "m")


def test_an_address_may_be_a_path_object_or_a_host_and_port(qsd):
    with QmpSource(pathlib.Path(qsd.lib)) as src:
        assert src.qemu_version()[0] >= 7
        assert src.address == "unix:" + qsd.lib
    with pytest.raises(blockjobinfo.QmpConnectionError) as refused:
        # A port nobody listens on (bound, never listening): refused, through the tuple.
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        try:
            QmpSource(("127.0.0.1", port), timeout=1)
        finally:
            s.close()
    assert refused.value.errno == errno.ECONNREFUSED and f"127.0.0.1:{port}" in str(refused.value)
    for bad in (("127.0.0.1",), ("h", 0), ("h", True), (1, 2), ("h", 70000)):
        with pytest.raises(ValueError, match="host, port"):
            QmpSource(bad)
    with pytest.raises(TypeError, match="PathLike"):
        QmpSource(b"/x")


def test_a_source_says_what_it_is_and_warns_when_never_closed(qsd):
    src = QmpSource(qsd.lib)
    assert not src.closed and repr(src) == f"<blockjobinfo.QmpSource {qsd.lib!r}>", repr(src)
    src.close()
    src.close()
    assert src.closed and repr(src).endswith(" closed>")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        forgotten = QmpSource(qsd.lib)
        del forgotten
        gc.collect()
    ours = [w for w in caught if "blockjobinfo" in str(w.message)]
    assert [w.category for w in ours] == [ResourceWarning], [str(w.message) for w in caught]
    assert "never closed" in str(ours[0].message)


def test_the_version_is_the_distributions():
    from importlib.metadata import version

    assert blockjobinfo.__version__ == version("blockjobinfo") and blockjobinfo.__version__[0].isdigit()


def test_the_librarys_records_reach_pythons_logging_with_levels_cached(qsd):
    """Without BLOCKJOBINFO_LOG, the library's records go to ``logging`` under ``blockjobinfo``: a wait's INFO
    record ("no block job"), in a process of its own. A logger's level is read at its first record and cached:
    raised to DEBUG afterwards, it is still WARNING for the library until ``reset_logging()``."""
    program = f"""
import logging, sys
import blockjobinfo
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append((record.name, record.levelname, record.getMessage()))
logger = logging.getLogger("blockjobinfo")
logger.addHandler(Keep())
logger.setLevel(logging.WARNING)
with blockjobinfo.QmpSource({qsd.lib!r}) as src:
    outcomes = [src.wait("nosuchjob1", "ready", timeout=5).kind.value]
    assert blockjobinfo._native.flush_logging(10.0)
    logger.setLevel(logging.DEBUG)
    outcomes.append(src.wait("nosuchjob2", "ready", timeout=5).kind.value)
    assert blockjobinfo._native.flush_logging(10.0)
    blockjobinfo.reset_logging()
    outcomes.append(src.wait("nosuchjob3", "ready", timeout=5).kind.value)
    assert blockjobinfo._native.flush_logging(10.0)
print(*outcomes)
for r in records:
    print(*r, sep="|")
"""
    env = {k: v for k, v in os.environ.items() if k != "BLOCKJOBINFO_LOG"}
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "gone_before_ready gone_before_ready gone_before_ready", done.stdout
    said = [line for line in lines[1:] if "no block job" in line]
    # The first at WARNING, the second at the cached WARNING, the third read again at DEBUG.
    assert said == ["blockjobinfo.wait|INFO|wait: no block job 'nosuchjob3'"], stack_says(done.stdout)
    # Nothing on stderr: the records went to logging alone.
    assert "nosuchjob" not in done.stderr, done.stderr


def test_python_dash_m_lists_the_jobs_as_libvirt_answers(qsd):
    run = lambda *a: subprocess.run([sys.executable, "-m", "blockjobinfo", *a], capture_output=True, text=True,
                                    timeout=60)
    qsd.mirror(64 * 1024)
    every = run(qsd.lib)
    assert every.returncode == 0, every.stderr
    (line,) = every.stdout.splitlines()
    v = json.loads(line)
    assert v["type"] == 2 and v["raw"]["device"] == "m" and v["end"] == v["raw"]["len"], line
    # At 64 KiB/s, 8 MiB is far from ready: never done (at offset == len, libvirt's len - 1).
    assert not v["raw"]["ready"] and not v["done"] and v["cur"] < v["end"], line
    one = run(qsd.lib, "m")
    assert one.returncode == 0 and json.loads(one.stdout)["raw"]["device"] == "m", one.stderr
    missing = run(qsd.lib, "nosuchjob")
    assert missing.returncode == 1 and "no block job 'nosuchjob'" in missing.stderr, missing
    broken = run("/nonexistent/qmp.sock", "--timeout", "1")
    assert broken.returncode == 2 and "cannot connect" in broken.stderr, broken


def test_a_sub_interpreter_is_refused_and_the_main_one_goes_on():
    """The module's state is the process's (its logging, its exit handler): importing it in a sub-interpreter
    is an ImportError, and the process then imports and exits as usual (a sub-interpreter's import once hung
    the exit, and stopped the main interpreter's logging)."""
    program = """
import sys
try:
    import _interpreters as interpreters
except ImportError:
    import _xxsubinterpreters as interpreters
i = interpreters.create()
interpreters.run_string(i, '''
try:
    import blockjobinfo
    said = "imported"
except ImportError as e:
    said = "ImportError: " + str(e)
with open(PATH, "w") as f:
    f.write(said)
'''.replace("PATH", repr(sys.argv[1])))
interpreters.destroy(i)
import blockjobinfo
print(blockjobinfo.__version__)
"""
    with tempfile.TemporaryDirectory() as d:
        said_file = os.path.join(d, "said")
        done = subprocess.run([sys.executable, "-c", program, said_file], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, stack_says(done.stderr[-2000:])
        said = open(said_file).read()
    assert said.startswith("ImportError: ") and "interpreter" in said, stack_says(said)
    assert done.stdout.strip() == blockjobinfo.__version__


def test_records_of_threads_logging_at_once_all_arrive():
    """Four threads, each with a source of its own, make 100 records each at once (a wait for a job that is not
    there says so at INFO): all 400 reach ``logging`` (a queue handed over under contention once dropped about
    a fifth of them, and the flush still said all were there). A scripted peer, which serves four clients at
    once where QEMU's monitor serves one."""
    program = f"""
import logging, threading
import blockjobinfo
said = []
class Count(logging.Handler):
    def emit(self, record):
        if "no block job" in record.getMessage():
            said.append(record.getMessage())
logger = logging.getLogger("blockjobinfo")
logger.addHandler(Count())
logger.setLevel(logging.INFO)

def run(i):
    with blockjobinfo.QmpSource(PATH, timeout=30) as src:
        for n in range(100):
            src.wait(f"nosuchjob-{{i}}-{{n}}", "ready", timeout=5)

threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(blockjobinfo.flush_logging(30.0), len(said), len(set(said)))
"""
    env = {k: v for k, v in os.environ.items() if k != "BLOCKJOBINFO_LOG"}
    with tempfile.TemporaryDirectory() as d:
        peer = Peer(d)
        try:
            done = subprocess.run([sys.executable, "-c", program.replace("PATH", repr(peer.path))],
                                  capture_output=True, text=True, env=env, timeout=120)
        finally:
            peer.close()
    assert done.returncode == 0, stack_says(done.stderr[-2000:])
    assert done.stdout.split() == ["True", "400", "400"], stack_says(done.stdout)
