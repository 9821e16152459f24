//! `wait --stall-timeout`: a wait that gives up on a job making no net progress (its remaining work not
//! below its lowest) for that long, whatever its speed or size: what kubevirt#14367 asks for instead of a
//! timeout per GiB. A ready job is never stalled: it waits for its pivot.

use std::time::{Duration, Instant};

use blockjobinfo::convergence::{Progress, Reading, Settings, Tracker};

pub(crate) struct Stall {
    after: Duration,
    born: Instant,
    tracker: Tracker,
}

impl Stall {
    pub(crate) fn new(after: Duration) -> Stall {
        Stall {
            after,
            born: Instant::now(),
            tracker: Tracker::new(Settings {
                stall_after: after,
                ..Settings::default()
            }),
        }
    }

    /// How often the job is read for it: often enough to tell the time to a tenth, never more than 10 a second.
    pub(crate) fn every(&self) -> Duration {
        (self.after / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    /// Takes in a reading (its `at_us` is set here); the progress when the job has stalled. A job ready, or
    /// being finished (pivoted, aborted, concluded), is never stalled; nor one QEMU has not sized (its clock
    /// starts at its sizing).
    pub(crate) fn feed(&mut self, mut r: Reading) -> Option<Progress> {
        r.at_us = u64::try_from(self.born.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.feed_at(r)
    }

    /// `feed` with the reading's own time. A ready job is exempt even while paused (QEMU's `standby`, or a
    /// moment's drain): it waits for its pivot.
    fn feed_at(&mut self, r: Reading) -> Option<Progress> {
        let exempt = r.ready || r.finishing || r.len == 0;
        let p = self.tracker.add(r);
        (!exempt && p.since_net_progress >= self.after).then_some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn at(s: u64, offset: u64, len: u64) -> Reading {
        Reading {
            at_us: s * 1_000_000,
            offset,
            len,
            ..Reading::default()
        }
    }

    #[test]
    fn no_net_progress_for_the_time_is_a_stall_and_a_converging_copy_is_not() {
        let mut st = Stall::new(Duration::from_secs(10));
        // Converging: never.
        for s in 0..100 {
            assert!(st.feed_at(at(s, s * MIB, 1024 * MIB)).is_none(), "{s}");
        }
        // Losing as much as it copies from 99 s on: its work left stays at its low; ten seconds later, a stall.
        for s in 100..109 {
            assert!(st.feed_at(at(s, s * MIB, 1024 * MIB + (s - 99) * MIB)).is_none(), "{s}");
        }
        let p = st.feed_at(at(109, 109 * MIB, 1024 * MIB + 10 * MIB)).expect("stalled");
        assert_eq!(p.since_net_progress, Duration::from_secs(10));
    }

    #[test]
    fn ready_finishing_and_unsized_jobs_are_never_stalled() {
        let mut st = Stall::new(Duration::from_secs(5));
        for s in 0..60 {
            assert!(st.feed_at(at(s, 0, 0)).is_none(), "unsized {s}");
        }
        let mut st = Stall::new(Duration::from_secs(5));
        for s in 0..60 {
            let mut r = at(s, 64 * MIB, 64 * MIB + s * MIB);
            r.ready = true;
            assert!(st.feed_at(r).is_none(), "ready {s}");
        }
        let mut st = Stall::new(Duration::from_secs(5));
        for s in 0..60 {
            let mut r = at(s, MIB, 64 * MIB);
            r.finishing = true;
            assert!(st.feed_at(r).is_none(), "finishing {s}");
        }
        // Ready and paused (standby, or drained for a moment): still waiting for its pivot.
        let mut st = Stall::new(Duration::from_secs(5));
        for s in 0..60 {
            let mut r = at(s, 64 * MIB, 64 * MIB + s * MIB);
            r.ready = true;
            r.paused = s % 2 == 0;
            assert!(st.feed_at(r).is_none(), "standby {s}");
        }
        // A still job that is none of these is.
        let mut st = Stall::new(Duration::from_secs(5));
        assert!((0..10).any(|s| st.feed_at(at(s, MIB, 64 * MIB)).is_some()));
    }

    #[test]
    fn it_reads_a_tenth_of_its_time_between_a_tenth_and_one_second() {
        assert_eq!(Stall::new(Duration::from_secs(5)).every(), Duration::from_millis(500));
        assert_eq!(Stall::new(Duration::from_secs(300)).every(), Duration::from_secs(1));
        assert_eq!(
            Stall::new(Duration::from_millis(200)).every(),
            Duration::from_millis(100)
        );
    }
}
