//! `wait --stall-timeout`: a wait that gives up on a job making no net progress (its remaining work not
//! below its lowest) for that long, whatever its speed or size: what kubevirt#14367 asks for instead of a
//! timeout per GiB. A ready job is never stalled: it waits for its pivot.

use std::time::{Duration, Instant};

use blockjobinfo::convergence::{Progress, Reading, Settings, State, Tracker};

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

    /// Takes in a reading (its `at_us` is set here); the progress when the job has stalled.
    pub(crate) fn feed(&mut self, mut r: Reading) -> Option<Progress> {
        r.at_us = u64::try_from(self.born.elapsed().as_micros()).unwrap_or(u64::MAX);
        let p = self.tracker.add(r);
        (p.state != State::Ready && p.since_net_progress >= self.after).then_some(p)
    }
}
