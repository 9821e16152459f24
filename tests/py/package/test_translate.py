"""Eric Blake's rules through `translate`, each case as docs/rules.md gives it."""

import json

import pytest

import blockjobinfo
from blockjobinfo import JobType, translate
from conftest import MIB, job

CASES = [
    # (offset, len, ready, extra fields) -> (cur, end)
    ((5, 10, False, {}), (5, 10)),  # running
    ((10, 10, False, {}), (9, 10)),  # the 2016 window: offset == len, not ready
    ((10, 10, True, {}), (10, 10)),  # ready: mirroring
    ((0, 0, False, {}), (0, 1)),  # not sized yet
    ((0, 0, True, {}), (1, 1)),  # a no-op job, ready
    ((12, 10, False, {}), (9, 10)),  # offset > len: as offset == len
    ((10, 10, None, {}), (10, 10)),  # QEMU before 2.2 (no `ready`): libvirt's reading
    ((0, 0, None, {}), (0, 0)),  # the same, unsized: libvirt's 0/0
]


@pytest.mark.parametrize("given,want", CASES)
def test_each_rule(given, want):
    offset, length, ready, extra = given
    reply = {"return": [job(offset, length, ready, **extra)]}
    info = translate(json.dumps(reply), "m")
    assert info is not None
    assert (info.cur, info.end) == want, (given, info)
    assert info.type == JobType.COPY
    # The same from the reply as a dict, and from its `return` list.
    assert translate(reply, "m") == info
    assert translate(reply["return"], "m") == info


def test_never_done_before_ready_over_a_grid():
    for length in (1, 2, 10, 1 << 40):
        for offset in (0, 1, length - 1, length, length + 1):
            info = translate([job(offset, length, False)], "m")
            assert not info.done, (offset, length, info)


def test_types_bandwidth_and_missing_job():
    for qemu, want in (("stream", JobType.PULL), ("commit", JobType.COMMIT), ("backup", JobType.BACKUP)):
        assert translate([job(1, 2, None, type=qemu)], "m").type == want
    # MiB/s rounded up, as libvirt; bytes/s when asked.
    assert translate([job(1, 2, False, speed=1)], "m").bandwidth == 1
    assert translate([job(1, 2, False, speed=3 * MIB + 1)], "m").bandwidth == 4
    assert translate([job(1, 2, False, speed=3 * MIB + 1)], "m", bandwidth_bytes=True).bandwidth == 3 * MIB + 1
    assert translate([job(1, 2, False)], "other") is None
    assert translate([], "m") is None


def test_bad_replies_are_exceptions():
    # Text that is not JSON is the caller's mistake.
    with pytest.raises(ValueError, match="not valid JSON"):
        translate("{not json", "m")
    with pytest.raises(blockjobinfo.QemuError):
        translate({"error": {"class": "GenericError", "desc": "no"}}, "m")
    with pytest.raises(TypeError):
        translate(42, "m")
    with pytest.raises(TypeError):
        translate([], 7)
