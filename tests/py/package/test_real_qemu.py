"""Answers and waits on a real qemu-storage-daemon: the throttled mirror's window, a wait for ready and for gone,
and every ending told as `bji_wait` tells it."""

import time

import pytest

import blockjobinfo
from blockjobinfo import JobType, OutcomeKind, QmpSource
from conftest import IMAGE, MIB, listened, stack_says, wait_in_thread, wait_listening


def test_a_throttled_mirror_is_never_done_before_ready(qsd):
    with QmpSource(qsd.lib) as src:
        assert src.info("m") is None
        # One burst, then a 4 s pause with offset == len, not ready: the 2016 window.
        qsd.mirror(2 * MIB)
        window = 0
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline
            info = src.info("m")
            assert info is not None and info.type == JobType.COPY
            raw = info.raw
            if raw.ready:
                break
            assert not info.done, stack_says(f"cur == end before ready: {info}")
            if raw.offset == raw.len:
                assert (info.cur, info.end) == (raw.len - 1, raw.len)
                window += 1
                if window == 2000:
                    qsd.ctl.wait_event("BLOCK_JOB_READY")
        assert window > 0, stack_says("the window was never sampled")
        # Ready, as QEMU says on its own connection.
        assert any(j["ready"] for j in qsd.ctl.jobs())
        assert src.info("m").done
        assert src.info("m", bandwidth_bytes=True).bandwidth == 2 * MIB
        assert src.info("m").bandwidth == 2


def test_wait_for_ready_then_gone(qsd):
    with QmpSource(qsd.lib) as src:
        qsd.mirror(4 * MIB)
        out = src.wait("m", "ready", timeout=60)
        assert out.kind is OutcomeKind.REACHED and out, out
        assert out.last.done, out
        # The event that decided it: QEMU's BLOCK_JOB_READY, or its JOB_STATUS_CHANGE to ready (sent first).
        assert out.event["event"] == "BLOCK_JOB_READY" or out.event["data"]["status"] == "ready", out
        assert qsd.ctl.jobs()[0]["ready"] is True
        t, ended = wait_in_thread(src, "m", "gone")
        time.sleep(0.5)
        qsd.ctl.ok("block-job-complete", device="m")
        t.join(70)
        assert ended and ended[0].kind is OutcomeKind.REACHED, ended
        assert src.info("m") is None


def test_a_wait_that_times_out_is_an_outcome(qsd):
    with QmpSource(qsd.lib) as src:
        qsd.mirror(64 * 1024)
        started = time.monotonic()
        out = src.wait("m", "ready", timeout=0.3)
        assert out.kind is OutcomeKind.TIMED_OUT and not out
        assert time.monotonic() - started >= 0.3


@pytest.mark.parametrize(
    "ending,until,want,event",
    [
        ("cancel_before_ready", "gone", OutcomeKind.CANCELLED, "BLOCK_JOB_CANCELLED"),
        # libvirt tells a ready copy cancelled without a pivot as CANCELED (QEMU says completed).
        ("cancel_after_ready", "gone", OutcomeKind.CANCELLED, "BLOCK_JOB_COMPLETED"),
        ("pivot", "gone", OutcomeKind.REACHED, "BLOCK_JOB_COMPLETED"),
        ("backup", "gone", OutcomeKind.REACHED, "BLOCK_JOB_COMPLETED"),
        ("missing", "gone", OutcomeKind.REACHED, None),
        # Waiting for ready: a job that ends without being ready, and one that is not there.
        ("cancel_before_ready", "ready", OutcomeKind.CANCELLED, "BLOCK_JOB_CANCELLED"),
        ("backup", "ready", OutcomeKind.GONE_BEFORE_READY, "BLOCK_JOB_COMPLETED"),
        ("missing", "ready", OutcomeKind.GONE_BEFORE_READY, None),
    ],
)
def test_every_ending(qsd, ending, until, want, event):
    """Each ending as `bji_wait` tells it (its `BJI_WAIT_*` codes are these kinds), decided by the event the
    wait heard while it waited (a wait that began after the job was gone would hear none)."""
    # `top` is exported over NBD, as a daemon serves its images: the export is what a pivot moves, and what
    # tells a ready copy's two endings apart.
    qsd.ctl.ok("nbd-server-start", addr={"type": "unix", "data": {"path": qsd.path("nbd.sock")}})
    qsd.ctl.ok("block-export-add", type="nbd", id="e0", **{"node-name": "top"})
    with QmpSource(qsd.lib) as src:
        if ending == "backup":
            # A throttled backup runs about a second, then completes.
            qsd.ctl.ok("blockdev-backup", **{"job-id": "m", "device": "top", "target": "dst", "sync": "full",
                                             "speed": 8 * MIB})
        elif ending != "missing":
            # Before ready: 4 s of window to cancel in; after ready: a short window.
            qsd.mirror(2 * MIB if ending == "cancel_before_ready" else 16 * MIB)
            if ending in ("cancel_after_ready", "pivot"):
                assert src.wait("m", "ready", timeout=60)
        t, ended = wait_in_thread(src, "m", until)
        time.sleep(0.5)
        if ending.startswith("cancel"):
            qsd.ctl.ok("block-job-cancel", device="m")
        elif ending == "pivot":
            qsd.ctl.ok("block-job-complete", device="m")
        t.join(70)
        assert ended, stack_says(f"{ending}: the wait did not end")
        out = ended[0]
        assert out.kind is want, stack_says(f"{ending}, until {until}: {out}")
        got = None if out.event is None else out.event["event"]
        assert got == event, stack_says(f"{ending}, until {until}: decided by {got}: {out}")


def test_qemu_that_dies_during_a_wait_is_an_exception(qsd):
    with QmpSource(qsd.lib) as src:
        qsd.mirror(64 * 1024)
        with wait_listening("m") as listening:
            t, raised = wait_in_thread(src, "m", "ready")
            assert listened(listening, t), stack_says(f"the wait never listened: {raised}")
        qsd.stop()
        t.join(30)
        assert raised and isinstance(raised[0], blockjobinfo.BlockJobInfoError), stack_says(
            f"the wait outlived its QEMU without an exception: {raised}"
        )


def test_an_io_error_fails_the_wait(qsd):
    with QmpSource(qsd.lib) as src:
        # Writes at 4 MiB and beyond fail with EIO, about two seconds into a 2 MiB/s copy.
        qsd.ctl.ok("blockdev-add", driver="blkdebug", **{"node-name": "bad"}, image="dst",
                   **{"inject-error": [{"event": "pwritev", "errno": 5, "sector": 8192}]})
        qsd.mirror(2 * MIB, target="bad", **{"on-target-error": "report"})
        out = src.wait("m", "ready", timeout=60)
        assert out.kind is OutcomeKind.FAILED, stack_says(str(out))
        assert "Input/output error" in out.error or "I/O error" in out.error, out


def test_qemu_that_dies_is_an_exception(qsd):
    src = QmpSource(qsd.lib)
    qsd.mirror(64 * 1024)
    assert src.info("m") is not None
    qsd.stop()
    with pytest.raises(blockjobinfo.BlockJobInfoError):
        src.info("m")
    with pytest.raises(blockjobinfo.BlockJobInfoError):
        src.wait("m", "ready", timeout=5)
    src.close()


def test_jobs_and_version(qsd):
    with QmpSource(qsd.lib) as src:
        assert src.jobs() == []
        qsd.mirror(64 * 1024)
        (j,) = src.jobs()
        assert j.raw.device == "m" and j.end == IMAGE and not j.done
        assert len(src.qemu_version()) == 3
