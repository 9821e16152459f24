"""Every job's life on a real qemu-storage-daemon from `QmpSource.events()`: start, ready and each ending (a ready
copy cancelled while an NBD export uses its image, a backup whose target fails, with QEMU's error text), in
order, as `blockjobinfo events --qmp` tells them; an iterator closed ends its watch within the second it waits
for it; a timeout ends it; `last_ending` keeps an ending that came between two calls, with QEMU's time and text."""

import threading
import time

from blockjobinfo import Ending, JobEvent, QmpSource
from conftest import MIB, stack_says


def next_where(it, what, pred, seen):
    """The next event `pred` accepts (those before it kept in `seen`); the watch's own timeout bounds it."""
    for e in it:
        seen.append(e)
        if pred(e):
            return e
    raise AssertionError(stack_says(f"no {what}: {seen}"))


def test_every_ending_is_told_in_order(qsd):
    # Writes at 4 MiB and beyond fail with EIO.
    qsd.ctl.ok("blockdev-add", driver="blkdebug", **{"node-name": "bad"}, image="dst",
               **{"inject-error": [{"event": "pwritev", "errno": 5, "sector": 8192}]})
    # `top` exported over NBD, as a daemon serves its images: the export is what a pivot would move, and what
    # tells a ready copy's cancel from a pivot (with no user, both leave QEMU's one trace: completed).
    qsd.ctl.ok("nbd-server-start", addr={"type": "unix", "data": {"path": qsd.path("nbd.sock")}})
    qsd.ctl.ok("block-export-add", type="nbd", id="e0", **{"node-name": "top"})
    seen = []
    with QmpSource(qsd.lib) as src:
        events = src.events(timeout=120)
        first = next_where(events, "watching", lambda e: e.event == "watching", seen)
        assert isinstance(first, JobEvent) and first.jobs == 0 and first.seq == 1, first
        qsd.mirror(16 * MIB)
        next_where(events, "m ready", lambda e: e.device == "m" and e.event == "ready", seen)
        qsd.ctl.ok("block-job-cancel", device="m")
        end_m = next_where(events, "m's end", lambda e: e.device == "m" and e.event == "end", seen)
        qsd.ctl.wait_gone("m")
        qsd.ctl.ok("blockdev-backup", **{"job-id": "b", "device": "top", "target": "bad", "sync": "full",
                                         "auto-dismiss": False})
        end_b = next_where(events, "b's end", lambda e: e.device == "b" and e.event == "end", seen)
        qsd.ctl.ok("job-dismiss", id="b")
        events.close()
    of = lambda d: [(e.event, e.outcome) for e in seen if e.device == d]  # noqa: E731
    # A ready copy cancelled without a pivot: canceled, as libvirt tells it.
    assert of("m") == [("start", None), ("ready", None), ("end", "canceled")], stack_says(str(seen))
    assert end_m.type == "mirror" and end_m.qemu_time is not None and end_m.qemu_time > 1e9, end_m
    assert of("b") == [("start", None), ("end", "failed")], stack_says(str(seen))
    assert "Input/output error" in end_b.error, end_b
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1)), seen


def test_closing_the_iterator_ends_the_watch_at_once(qsd):
    with QmpSource(qsd.lib) as src:
        events = src.events()
        assert next(events).event == "watching"
        before = {t.name for t in threading.enumerate()}
        assert "blockjobinfo-events" in before
        started = time.monotonic()
        events.close()
        took = time.monotonic() - started
        # The watch asks every 20 ms whether to stop; the close waits for it (at most 1 s). Measured: ~25 ms.
        assert took < 1.0, took
        assert "blockjobinfo-events" not in {t.name for t in threading.enumerate()}
        # The source is whole: a query on it answers.
        assert src.jobs() == []


def test_a_timeout_ends_the_iteration(qsd):
    with QmpSource(qsd.lib) as src:
        started = time.monotonic()
        got = list(src.events(timeout=0.5))
        assert time.monotonic() - started >= 0.5
        assert [e.event for e in got] == ["watching"], got


def test_last_ending_keeps_an_ending_between_two_calls(qsd):
    qsd.ctl.ok("blockdev-add", driver="blkdebug", **{"node-name": "bad"}, image="dst",
               **{"inject-error": [{"event": "pwritev", "errno": 5}]})
    with QmpSource(qsd.lib) as src:
        assert src.last_ending("b") is None
        # No call while the backup runs and fails.
        qsd.ctl.ok("blockdev-backup", **{"job-id": "b", "device": "top", "target": "bad", "sync": "full"})
        ev = qsd.ctl.wait_event("BLOCK_JOB_COMPLETED")
        e = src.last_ending("b")
    assert isinstance(e, Ending), e
    assert (e.outcome, e.type, e.qemu_time, e.was_ready) == ("failed", "backup", True, False), stack_says(str(e))
    assert e.error == ev["data"]["error"] and "Input/output error" in e.error, (e, ev)
    stamp = ev["timestamp"]["seconds"] + ev["timestamp"]["microseconds"] / 1e6
    assert abs(e.ended - stamp) < 1e-5, (e, ev)
    assert e.ran is not None and 0 <= e.ran < 60, e
