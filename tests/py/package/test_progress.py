"""`QmpSource.progress` on a real qemu-storage-daemon: rates, ETA and state from the source's readings of a job,
as the Rust library gives them (the rules under real writes are tests/guest_convergence.rs's)."""

import time

import pytest

from blockjobinfo import Progress, QmpSource
from conftest import IMAGE, MIB, stack_says


def test_progress_measures_a_copy_from_successive_readings(qsd):
    with QmpSource(qsd.lib) as src:
        assert src.progress("m") is None
        src.set_progress_window(window=5, stall_after=30)
        qsd.mirror(2 * MIB)
        first = src.progress("m")
        assert isinstance(first, Progress)
        # One reading: no rate yet (or nothing left: the throttled mirror's one burst may have copied it all).
        assert first.copy_rate is None and first.dirty_rate is None and first.net_rate is None
        assert first.state in ("measuring", "converging", "ready"), stack_says(str(first))
        assert (first.len, first.speed) == (IMAGE, 2 * MIB)
        # QEMU 8.2 and later say whether a mirror is actively synced (false in the default background mode).
        if src.qemu_version() >= (8, 2, 0):
            assert first.actively_synced is False, stack_says(str(first))
        else:
            assert first.actively_synced is None, stack_says(str(first))
        time.sleep(0.6)
        second = src.progress("m")
        assert second.copy_rate is not None and second.copy_rate >= 0, stack_says(str(second))
        # Nothing writes to the daemon's image: len never grows (a least-squares slope of a flat line, to the
        # float's rounding).
        assert second.dirty_rate < 1.0, stack_says(str(second))
        assert second.state in ("converging", "ready"), stack_says(str(second))
        assert second.eta is not None and second.eta >= 0
        qsd.ctl.wait_event("BLOCK_JOB_READY")
        ready = src.progress("m")
        assert (ready.state, ready.eta) == ("ready", 0.0), stack_says(str(ready))


def test_progress_settings_are_checked(qsd):
    with QmpSource(qsd.lib) as src:
        with pytest.raises(TypeError):
            src.set_progress_window("10")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            src.set_progress_window(-1.0)
        with pytest.raises(TypeError):
            src.progress(3)  # type: ignore[arg-type]
