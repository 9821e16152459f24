//! Will a job converge, and when? Pure: rates, an ETA and a state from successive readings of one job.
//!
//! A mirror's `len` grows while the guest dirties what was already copied, and its `offset` chases it; a
//! cursor-only rate then promises an end that moves away. So two rates are kept apart: the copy rate (how fast
//! `offset` moves) and the dirty rate (how fast `len` grows), and the ETA comes from the net rate, how fast the
//! remaining work (`len - offset`) shrinks. Nothing here changes a job: the state says which change would help.

use std::collections::VecDeque;
use std::time::Duration;

/// One reading of a job, as `query-block-jobs` gave it, at `at_us` on a monotonic clock of the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reading {
    pub at_us: u64,
    pub offset: u64,
    pub len: u64,
    /// The job's speed limit in bytes/s; 0 is unlimited.
    pub speed: u64,
    pub ready: bool,
    pub paused: bool,
    /// Its work done or given up, QEMU finishing it: `waiting` (for the rest of its transaction), `pending`,
    /// `aborting`, `concluded` (left for its dismissal), `null`.
    pub finishing: bool,
    /// QEMU 8.2+: a mirror in `write-blocking` mode whose target is in sync (`None`: not reported).
    pub actively_synced: Option<bool>,
}

impl Reading {
    /// The reading of `job` taken at `at_us`.
    pub fn of(job: &crate::translate::RawJob, at_us: u64) -> Reading {
        Reading {
            at_us,
            offset: job.offset,
            len: job.len,
            speed: job.speed,
            ready: job.ready == Some(true) || job.status.as_deref() == Some("ready"),
            paused: job.paused == Some(true) || matches!(job.status.as_deref(), Some("paused") | Some("standby")),
            finishing: matches!(
                job.status.as_deref(),
                Some("waiting" | "pending" | "aborting" | "concluded" | "null")
            ),
            actively_synced: job.actively_synced,
        }
    }

    /// The reading of a job as libvirt reports it (`cur`, `end`, bytes/s `bandwidth`), where `ready` is the
    /// domain XML's `<mirror ready='yes'>` (or later `pivot`/`abort`). libvirt (since 2.0) shows a job QEMU has
    /// not sized as 0/1, and a mirror caught up but not ready as `end - 1`: taken back to 0/0 and `cur == end`,
    /// which is what they stand for.
    pub fn of_libvirt(cur: u64, end: u64, bandwidth: u64, ready: bool, at_us: u64) -> Reading {
        let (offset, len) = match (cur, end) {
            (0, 1) => (0, 0),
            (c, e) if !ready && e > 0 && c + 1 == e => (e, e),
            other => other,
        };
        Reading {
            at_us,
            offset,
            len,
            speed: bandwidth,
            ready,
            ..Reading::default()
        }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.offset)
    }
}

/// How rates are measured and when a job is called stalled. Rates span the window, and further back as needed
/// to take in two moves of the cursor: QEMU moves a throttled mirror in steps of its buffer (16 MiB by default:
/// every 16 s at 1 MiB/s), and a window between two steps would see a job standing still.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Rates span at least this much of the job's history when there is that much (less at first).
    pub window: Duration,
    /// A job whose cursor has not moved for this long is `Stalled`.
    pub stall_after: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            window: Duration::from_secs(10),
            stall_after: Duration::from_secs(60),
        }
    }
}

/// Rates spanning less than this are not given: two readings a few milliseconds apart say nothing of a rate.
pub const MIN_SPAN: Duration = Duration::from_millis(500);

/// A copy is converging when its remaining work shrinks by at least this share of what it copies: below that,
/// its ETA would be many times its copy time, and it moves away with every burst of the guest's writes.
pub const CONVERGING_SHARE: f64 = 0.05;

/// A job not converging counts as held at its speed (`Throttled`) when it copies at least this share of it. A
/// mirror held at its limit while its guest writes copies well below it (seen: 75 % to 85 % of it under TCG,
/// the copy waiting on chunks the guest is writing); one at less than half its limit is held by something else.
pub const AT_SPEED_SHARE: f64 = 0.5;

/// What a job is doing, and so what would help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Not enough history yet for a rate (or QEMU has not sized the job).
    Measuring,
    /// The remaining work shrinks: it will end (or become ready) in about the ETA.
    Converging,
    /// Held at its speed limit while the guest dirties at least as fast: raising the speed would help.
    Throttled,
    /// Unthrottled and still losing: the guest dirties faster than the copy can go. QEMU 8.2+'s
    /// `copy-mode=write-blocking` would help (guest writes then wait for the target).
    Diverging,
    /// The cursor has not moved for the set time (a target that does not accept writes, say).
    Stalled,
    /// Paused (asked to, or by an I/O error under `on-*-error=stop`).
    Paused,
    /// Ready (a mirror in its mirroring phase).
    Ready,
    /// Its work done or given up, QEMU finishing it (waiting for its transaction, pending, aborting, concluded).
    Finishing,
}

impl State {
    pub const ALL: [State; 8] = [
        State::Measuring,
        State::Converging,
        State::Throttled,
        State::Diverging,
        State::Stalled,
        State::Paused,
        State::Ready,
        State::Finishing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Measuring => "measuring",
            State::Converging => "converging",
            State::Throttled => "throttled",
            State::Diverging => "diverging",
            State::Stalled => "stalled",
            State::Paused => "paused",
            State::Ready => "ready",
            State::Finishing => "finishing",
        }
    }

    /// The number the C API gives it (`BJI_STATE_*`).
    pub fn code(self) -> i32 {
        State::ALL.iter().position(|s| *s == self).unwrap_or(0) as i32
    }

    /// What a user could do about it, in a few words; empty where nothing is needed.
    pub fn remedy(self) -> &'static str {
        match self {
            State::Throttled => "raise the job's speed",
            State::Diverging => "switch the mirror to copy-mode=write-blocking (QEMU 8.2+)",
            State::Stalled => "check the target: the copy makes no progress",
            _ => "",
        }
    }
}

/// Where a job stands, from its readings so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub state: State,
    /// Bytes/s the cursor moved over the window (`None` while measuring).
    pub copy_rate: Option<f64>,
    /// Bytes/s `len` grew over the window: what the guest dirtied behind the cursor.
    pub dirty_rate: Option<f64>,
    /// Bytes/s the remaining work shrank (negative: it grew).
    pub net_rate: Option<f64>,
    /// Time to the end (to ready, for a mirror) at the net rate: only while converging; zero when ready.
    pub eta: Option<Duration>,
    pub offset: u64,
    pub len: u64,
    pub speed: u64,
    /// How long the cursor has not moved, as far as the readings tell.
    pub since_cursor_moved: Duration,
    /// How long the remaining work has not gone below its lowest, as far as the readings tell: a copy that
    /// moves but loses as much as it copies makes no net progress.
    pub since_net_progress: Duration,
    pub actively_synced: Option<bool>,
    /// The reading's own time.
    pub at_us: u64,
}

/// The readings of one job, kept as far back as the window needs.
#[derive(Debug, Clone)]
pub struct Tracker {
    settings: Settings,
    samples: VecDeque<Reading>,
    cursor_moved_at: u64,
    lowest_remaining: u64,
    lowest_at: u64,
}

/// The most readings a tracker keeps, however often it is fed.
const MAX_SAMPLES: usize = 256;

/// The oldest reading a tracker keeps (beyond the window, for a cursor that moves in steps).
const MAX_AGE: Duration = Duration::from_secs(300);

impl Tracker {
    pub fn new(settings: Settings) -> Tracker {
        Tracker {
            settings,
            samples: VecDeque::new(),
            cursor_moved_at: 0,
            lowest_remaining: u64::MAX,
            lowest_at: 0,
        }
    }

    /// Takes in a reading and says where the job stands. A reading older than the last is ignored; a cursor
    /// that went back (the id now names a new job) starts the history again.
    pub fn add(&mut self, r: Reading) -> Progress {
        match self.samples.back() {
            Some(last) if r.at_us < last.at_us => return self.progress().unwrap_or_else(|| self.judge(r)),
            Some(last) if r.offset < last.offset => self.restart(),
            // Sized at last: the readings of 0/0 say nothing of its rates.
            Some(last) if last.len == 0 && r.len > 0 => self.samples.clear(),
            _ => {}
        }
        // A first reading counts as a move, its sizing included (the readings of 0/0 were dropped above): a job
        // that scanned its source for minutes at 0/0 has not stood still.
        let moved = self.samples.back().is_none_or(|last| r.offset != last.offset);
        if moved {
            self.cursor_moved_at = r.at_us;
        }
        // A job QEMU has not sized (0/0) has no remaining work to speak of yet: its first low is its sizing.
        if r.len > 0 && r.remaining() < self.lowest_remaining {
            self.lowest_remaining = r.remaining();
            self.lowest_at = r.at_us;
        }
        self.samples.push_back(r);
        // Nothing older than the window or MAX_AGE, whichever is longer, but the newest reading that old.
        let keep = dur_us(self.settings.window.max(MAX_AGE));
        while self.samples.len() > 2 && r.at_us.saturating_sub(self.samples[1].at_us) >= keep {
            self.samples.pop_front();
        }
        while self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.judge(r)
    }

    /// Where the job stood at its last reading.
    pub fn progress(&self) -> Option<Progress> {
        self.samples.back().map(|r| self.judge(*r))
    }

    fn restart(&mut self) {
        self.samples.clear();
        self.lowest_remaining = u64::MAX;
    }

    /// Where the readings rates are taken over begin: the newest one at least the window old after which the
    /// cursor moved at least twice, else the oldest kept.
    /// A cursor that has stood still longer than its longest step so far is stuck, not stepping: its rate is
    /// the window's alone, which falls to 0 as a hung target's would.
    fn window_start(&self) -> usize {
        let window = dur_us(self.settings.window);
        let Some(last) = self.samples.back() else { return 0 };
        // The longest time between two moves, and when the last one was.
        let (mut longest, mut moved) = (0, None::<u64>);
        for (a, b) in self.samples.iter().zip(self.samples.iter().skip(1)) {
            if b.offset != a.offset {
                if let Some(m) = moved {
                    longest = longest.max(b.at_us - m);
                }
                moved = Some(b.at_us);
            }
        }
        let stepping = moved.is_some_and(|m| last.at_us - m <= longest);
        let mut moves = 0;
        for i in (0..self.samples.len().saturating_sub(1)).rev() {
            if self.samples[i + 1].offset != self.samples[i].offset {
                moves += 1;
            }
            if (moves >= 2 || !stepping) && last.at_us - self.samples[i].at_us >= window {
                return i;
            }
        }
        0
    }

    fn judge(&self, r: Reading) -> Progress {
        let window = self.samples.range(self.window_start()..);
        let base = window.clone().next().copied().unwrap_or(r);
        let span = r.at_us.saturating_sub(base.at_us);
        // Every reading kept is sized when this one is: those of 0/0 before its sizing were dropped.
        let rates = (span >= dur_us(MIN_SPAN) && r.len > 0).then(|| {
            // Least squares over the window, not its two ends: a mirror's cursor leaps by its whole buffer as it
            // starts (16 MiB by default), which two ends would take for speed.
            let copy = slope(window.clone(), |x| x.offset as f64);
            let dirty = slope(window, |x| x.len as f64);
            (copy, dirty.max(0.0), copy - dirty)
        });
        let since_cursor_moved = Duration::from_micros(r.at_us.saturating_sub(self.cursor_moved_at));
        let since_net_progress = match self.lowest_remaining {
            u64::MAX => Duration::ZERO,
            _ => Duration::from_micros(r.at_us.saturating_sub(self.lowest_at)),
        };
        // A pause first: QEMU's `standby` is a ready job paused (by request, or on an I/O error).
        let state = if r.paused {
            State::Paused
        } else if r.ready {
            State::Ready
        } else if r.finishing {
            State::Finishing
        } else if r.len == 0 {
            // Not sized yet (a mirror scanning its source): nothing to measure or call stalled.
            State::Measuring
        } else if since_cursor_moved >= self.settings.stall_after {
            State::Stalled
        } else if r.remaining() == 0 {
            // Caught up (`offset == len`, QEMU not yet saying ready): nothing is left to lose to.
            State::Converging
        } else {
            match rates {
                None => State::Measuring,
                Some((copy, _, net)) if net > 0.0 && net >= CONVERGING_SHARE * copy => State::Converging,
                Some((copy, _, _)) if r.speed > 0 && copy >= AT_SPEED_SHARE * r.speed as f64 => State::Throttled,
                Some(_) => State::Diverging,
            }
        };
        let eta = match (state, rates) {
            (State::Ready, _) => Some(Duration::ZERO),
            (State::Converging, _) if r.remaining() == 0 => Some(Duration::ZERO),
            (State::Converging, Some((_, _, net))) => Some(Duration::from_secs_f64(
                (r.remaining() as f64 / net).min(u32::MAX as f64),
            )),
            _ => None,
        };
        Progress {
            state,
            copy_rate: rates.map(|r| r.0),
            dirty_rate: rates.map(|r| r.1),
            net_rate: rates.map(|r| r.2),
            eta,
            offset: r.offset,
            len: r.len,
            speed: r.speed,
            since_cursor_moved,
            since_net_progress,
            actively_synced: r.actively_synced,
            at_us: r.at_us,
        }
    }
}

/// The least-squares slope of `y` over the readings' times, per second: the times centred on their mean, which
/// makes the sum of `dt * y` the slope's numerator whatever `y`'s own level.
fn slope<'a>(samples: impl Iterator<Item = &'a Reading> + Clone, y: impl Fn(&Reading) -> f64) -> f64 {
    let n = samples.clone().count() as f64;
    let t = |s: &Reading| s.at_us as f64 / 1e6;
    let mt = samples.clone().map(t).sum::<f64>() / n;
    let (num, den) = samples.fold((0.0, 0.0), |(a, b), s| {
        let dt = t(s) - mt;
        (a + dt * y(s), b + dt * dt)
    });
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

fn dur_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn reading(t_s: f64, offset: u64, len: u64, speed: u64) -> Reading {
        Reading {
            at_us: (t_s * 1e6) as u64,
            offset,
            len,
            speed,
            ..Reading::default()
        }
    }

    /// Feeds a copy at `copy` B/s with `dirty` B/s growth of len, one reading a second for `secs`.
    fn run(copy: u64, dirty: u64, speed: u64, len0: u64, secs: u64) -> Progress {
        let mut t = Tracker::new(Settings::default());
        let mut p = None;
        for s in 0..=secs {
            p = Some(t.add(reading(s as f64, copy * s, len0 + dirty * s, speed)));
        }
        p.unwrap()
    }

    #[test]
    fn one_reading_is_measuring() {
        let mut t = Tracker::new(Settings::default());
        let p = t.add(reading(0.0, 0, 100 * MIB, 0));
        assert_eq!(p.state, State::Measuring);
        assert_eq!((p.copy_rate, p.eta), (None, None));
        // Too close together for a rate.
        assert_eq!(t.add(reading(0.1, MIB, 100 * MIB, 0)).state, State::Measuring);
    }

    #[test]
    fn a_copy_ahead_of_the_guest_converges_with_an_eta_from_the_net_rate() {
        let p = run(16 * MIB, 2 * MIB, 0, 256 * MIB, 5);
        assert_eq!(p.state, State::Converging);
        assert_eq!(p.copy_rate, Some((16 * MIB) as f64));
        assert_eq!(p.dirty_rate, Some((2 * MIB) as f64));
        assert_eq!(p.net_rate, Some((14 * MIB) as f64));
        // remaining = 256 + 10 - 80 = 186 MiB at 14 MiB/s.
        let eta = p.eta.unwrap().as_secs_f64();
        assert!((eta - 186.0 / 14.0).abs() < 1e-6, "{eta}");
    }

    #[test]
    fn held_at_its_speed_and_losing_is_throttled_and_unthrottled_is_diverging() {
        let p = run(2 * MIB, 2 * MIB, 2 * MIB, 64 * MIB, 20);
        assert_eq!((p.state, p.eta), (State::Throttled, None));
        assert_eq!(p.state.remedy(), "raise the job's speed");
        let p = run(2 * MIB, 3 * MIB, 0, 64 * MIB, 20);
        assert_eq!(p.state, State::Diverging);
        // A speed limit far above what it copies: not what holds it back.
        let p = run(2 * MIB, 3 * MIB, 100 * MIB, 64 * MIB, 20);
        assert_eq!(p.state, State::Diverging);
    }

    #[test]
    fn caught_up_and_not_yet_ready_is_converging_with_nothing_left() {
        // A throttled mirror's first burst copies it all; QEMU says ready after its rate limit's pause.
        let mut t = Tracker::new(Settings::default());
        let p = t.add(reading(0.0, 8 * MIB, 8 * MIB, 2 * MIB));
        assert_eq!(
            (p.state, p.eta, p.copy_rate),
            (State::Converging, Some(Duration::ZERO), None)
        );
        let p = t.add(reading(3.0, 8 * MIB, 8 * MIB, 2 * MIB));
        assert_eq!(
            (p.state, p.eta, p.copy_rate),
            (State::Converging, Some(Duration::ZERO), Some(0.0))
        );
        // Not for a job QEMU has not sized.
        assert_eq!(
            Tracker::new(Settings::default()).add(reading(0.0, 0, 0, 0)).state,
            State::Measuring
        );
    }

    #[test]
    fn barely_shrinking_work_is_not_converging() {
        // 1 % of the copy comes off the remaining work: an ETA 100 times the copy time, not a convergence.
        let p = run(100 * MIB, 99 * MIB, 0, 64 * MIB, 20);
        assert_eq!(p.state, State::Diverging);
    }

    #[test]
    fn a_cursor_still_for_the_set_time_is_stalled() {
        let mut t = Tracker::new(Settings {
            window: Duration::from_secs(10),
            stall_after: Duration::from_secs(5),
        });
        t.add(reading(0.0, 0, 64 * MIB, 0));
        t.add(reading(1.0, MIB, 64 * MIB, 0));
        for s in 2..6 {
            assert_ne!(t.add(reading(s as f64, MIB, 64 * MIB, 0)).state, State::Stalled);
        }
        let p = t.add(reading(6.0, MIB, 64 * MIB, 0));
        assert_eq!(p.state, State::Stalled);
        assert_eq!(p.since_cursor_moved, Duration::from_secs(5));
        assert_eq!(p.state.remedy(), "check the target: the copy makes no progress");
        // It moves again.
        assert_eq!(t.add(reading(7.0, 2 * MIB, 64 * MIB, 0)).state, State::Converging);
    }

    #[test]
    fn no_net_progress_is_timed_even_while_the_cursor_moves() {
        let mut t = Tracker::new(Settings::default());
        for s in 0..=30u64 {
            let p = t.add(reading(s as f64, s * MIB, 64 * MIB + s * MIB, 0));
            assert_eq!(p.since_net_progress, Duration::from_secs(s));
            assert_eq!(p.since_cursor_moved, Duration::ZERO);
        }
    }

    #[test]
    fn ready_and_paused_come_first() {
        let mut t = Tracker::new(Settings::default());
        let mut r = reading(0.0, 64 * MIB, 64 * MIB, 0);
        r.ready = true;
        r.actively_synced = Some(true);
        let p = t.add(r);
        assert_eq!(
            (p.state, p.eta, p.actively_synced),
            (State::Ready, Some(Duration::ZERO), Some(true))
        );
        let mut r = reading(100.0, 64 * MIB, 65 * MIB, 0);
        r.paused = true;
        assert_eq!(t.add(r).state, State::Paused);
        // Ready and paused (QEMU's `standby`): paused.
        r.ready = true;
        r.at_us += 1;
        assert_eq!(t.add(r).state, State::Paused);
        // Concluded, pending, waiting, aborting: finishing, with no ETA, never stalled.
        let mut r = reading(500.0, MIB, 64 * MIB, 0);
        r.finishing = true;
        let p = t.add(r);
        assert_eq!((p.state, p.eta), (State::Finishing, None));
    }

    #[test]
    fn the_window_bounds_the_history() {
        let mut t = Tracker::new(Settings::default());
        // Fast at first, then slow: after the window only the slow part counts.
        for s in 0..=10u64 {
            t.add(reading(s as f64, s * 10 * MIB, 1024 * MIB, 0));
        }
        let mut p = None;
        for s in 11..=40u64 {
            p = Some(t.add(reading(s as f64, 100 * MIB + (s - 10) * MIB, 1024 * MIB, 0)));
        }
        assert_eq!(p.unwrap().copy_rate, Some(MIB as f64));
        // Every reading of the last MAX_AGE is kept.
        assert_eq!(t.samples.len(), 41);
    }

    #[test]
    fn a_cursor_going_back_is_a_new_job_and_old_readings_are_ignored() {
        let mut t = Tracker::new(Settings::default());
        t.add(reading(0.0, 0, 64 * MIB, 0));
        t.add(reading(2.0, 32 * MIB, 64 * MIB, 0));
        let p = t.add(reading(3.0, MIB, 64 * MIB, 0));
        assert_eq!(p.state, State::Measuring);
        let q = t.add(reading(1.0, 60 * MIB, 64 * MIB, 0));
        assert_eq!(q.offset, MIB);
    }

    #[test]
    fn unsized_jobs_measure() {
        let p = run(0, 0, 0, 0, 5);
        assert_eq!(p.state, State::Measuring);
    }

    proptest::proptest! {
        /// Any readings, however disordered or absurd: an answer, never a panic, and a state that agrees with
        /// its numbers.
        #[test]
        fn any_readings_give_a_coherent_answer(
            readings in proptest::collection::vec((0u64..1 << 40, 0u64..1 << 40, 0u64..1 << 40, 0u64..1 << 30,
                                                   proptest::bool::ANY, proptest::bool::ANY, proptest::bool::ANY),
                                                  1..60),
        ) {
            let mut t = Tracker::new(Settings::default());
            for (at_us, offset, len, speed, ready, paused, finishing) in readings {
                let p = t.add(Reading { at_us, offset, len, speed, ready, paused, finishing, actively_synced: None });
                if finishing && !ready && !paused && p.at_us == at_us {
                    proptest::prop_assert_eq!(p.state, State::Finishing);
                }
                if len == 0 && !ready && !paused && !finishing {
                    proptest::prop_assert_eq!(p.state, State::Measuring);
                }
                proptest::prop_assert_eq!(p.eta.is_some(), matches!(p.state, State::Converging | State::Ready));
                proptest::prop_assert_eq!(p.copy_rate.is_some(), p.net_rate.is_some());
                // Converging means shrinking work, or none left.
                if p.state == State::Converging && p.offset < p.len {
                    proptest::prop_assert!(p.net_rate.unwrap() > 0.0);
                }
                proptest::prop_assert!(t.samples.len() <= MAX_SAMPLES);
            }
        }

        /// A steady copy: the rates are those it ran at, and the state and ETA follow from them.
        #[test]
        fn a_steady_copy_is_measured_at_its_rates(
            copy in 1u64..1 << 30, dirty in 0u64..1 << 30, len0 in 1u64..1 << 40, secs in 1u64..30,
            speed in 0u64..1 << 30,
        ) {
            let p = run(copy, dirty, speed, len0, secs);
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.max(1.0);
            proptest::prop_assert!(close(p.copy_rate.unwrap(), copy as f64), "{:?}", p);
            proptest::prop_assert!(close(p.dirty_rate.unwrap(), dirty as f64), "{:?}", p);
            let net = copy as f64 - dirty as f64;
            let converging = net > 0.0 && net >= CONVERGING_SHARE * copy as f64;
            let remaining = (len0 + dirty * secs).saturating_sub(copy * secs);
            if remaining == 0 || net.abs() < 1e-3 * copy as f64 {
                return Ok(()); // at the boundary the float rounding decides, as it should not matter
            }
            proptest::prop_assert_eq!(p.state == State::Converging, converging, "{:?}", p);
            if converging {
                let eta = p.eta.unwrap().as_secs_f64();
                proptest::prop_assert!(close(eta * net, remaining as f64) || eta >= u32::MAX as f64 * 0.99, "{:?}", p);
            } else if speed > 0 && copy as f64 >= AT_SPEED_SHARE * speed as f64 {
                proptest::prop_assert_eq!(p.state, State::Throttled);
            } else {
                proptest::prop_assert_eq!(p.state, State::Diverging);
            }
        }
    }

    #[test]
    fn a_reading_of_a_job_takes_qemus_words_for_ready_and_paused() {
        let job = |ready, status: &str, paused| crate::translate::RawJob {
            offset: 3,
            len: 7,
            speed: 5,
            ready,
            status: Some(status.to_string()),
            paused,
            actively_synced: Some(true),
            ..Default::default()
        };
        let r = Reading::of(&job(Some(false), "running", Some(false)), 9);
        assert_eq!(
            r,
            Reading {
                at_us: 9,
                offset: 3,
                len: 7,
                speed: 5,
                ready: false,
                paused: false,
                finishing: false,
                actively_synced: Some(true)
            }
        );
        assert!(Reading::of(&job(Some(true), "running", None), 0).ready);
        assert!(Reading::of(&job(None, "ready", None), 0).ready);
        assert!(!Reading::of(&job(None, "running", None), 0).ready);
        assert!(Reading::of(&job(None, "running", Some(true)), 0).paused);
        assert!(Reading::of(&job(None, "paused", None), 0).paused);
        assert!(Reading::of(&job(None, "standby", None), 0).paused);
        assert!(!Reading::of(&job(None, "ready", None), 0).paused);
        for s in ["waiting", "pending", "aborting", "concluded", "null"] {
            assert!(Reading::of(&job(None, s, None), 0).finishing, "{s}");
        }
        for s in ["created", "running", "ready", "paused", "standby"] {
            assert!(!Reading::of(&job(None, s, None), 0).finishing, "{s}");
        }
    }

    #[test]
    fn remedies_name_what_would_help() {
        assert_eq!(
            State::Diverging.remedy(),
            "switch the mirror to copy-mode=write-blocking (QEMU 8.2+)"
        );
        for s in [State::Measuring, State::Converging, State::Paused, State::Ready] {
            assert_eq!(s.remedy(), "");
        }
    }

    #[test]
    fn a_reading_at_the_same_time_is_taken_and_an_earlier_one_is_not() {
        let mut t = Tracker::new(Settings::default());
        t.add(reading(1.0, MIB, 64 * MIB, 0));
        assert_eq!(t.add(reading(1.0, 2 * MIB, 64 * MIB, 0)).offset, 2 * MIB);
        assert_eq!(t.add(reading(0.5, 3 * MIB, 64 * MIB, 0)).offset, 2 * MIB);
    }

    #[test]
    fn shrinking_work_is_net_progress_and_an_unsized_job_sets_no_low() {
        let mut t = Tracker::new(Settings::default());
        // 0/0 first: QEMU has not sized it; its "remaining" of 0 is no low to measure progress against.
        t.add(reading(0.0, 0, 0, 0));
        for s in 1..=5u64 {
            let p = t.add(reading(s as f64, s * MIB, 64 * MIB, 0));
            assert_eq!(p.since_net_progress, Duration::ZERO, "{s}: {p:?}");
        }
        // Remaining work that stays put is no progress, timed from its low.
        let p = t.add(reading(8.0, 6 * MIB, 65 * MIB, 0));
        assert_eq!(p.since_net_progress, Duration::from_secs(3));
    }

    #[test]
    fn the_window_keeps_one_reading_that_old_and_all_newer_and_no_more_than_the_bound() {
        let mut t = Tracker::new(Settings::default());
        for s in 0..=400u64 {
            t.add(reading(s as f64, s * MIB, 1024 * MIB, 0));
        }
        // At most MAX_SAMPLES readings (here less than MAX_AGE of them); rates over the window's last 10 s.
        assert_eq!(t.samples.len(), MAX_SAMPLES);
        assert_eq!(t.samples.front().unwrap().at_us, 145_000_000);
        assert_eq!(t.window_start(), MAX_SAMPLES - 11);
        let mut t = Tracker::new(Settings::default());
        for s in 0..=200u64 {
            t.add(reading(s as f64 * 2.0, s * MIB, 1024 * MIB, 0));
        }
        // Readings 2 s apart: the newest MAX_AGE (300 s) old, and all after it.
        assert_eq!(t.samples.len(), 151);
        assert_eq!(t.samples.front().unwrap().at_us, 100_000_000);
        let mut t = Tracker::new(Settings::default());
        for i in 0..1000u64 {
            t.add(reading(i as f64 / 1000.0, i, 1 << 30, 0));
        }
        assert_eq!(t.samples.len(), MAX_SAMPLES);
        // A window of nothing still rates the last two readings.
        let mut t = Tracker::new(Settings {
            window: Duration::ZERO,
            ..Settings::default()
        });
        t.add(reading(0.0, 0, 64 * MIB, 0));
        let p = t.add(reading(1.0, MIB, 64 * MIB, 0));
        assert_eq!(p.copy_rate, Some(MIB as f64));
    }

    #[test]
    fn a_mirror_stepping_by_its_buffer_is_converging_between_its_steps() {
        // 16 MiB every 16 s (1 MiB/s with QEMU's default buffer), read every second: still for 15 s at a time.
        let mut t = Tracker::new(Settings::default());
        for s in 0..=200u64 {
            let p = t.add(reading(s as f64, (s / 16 + 1) * 16 * MIB, 1024 * MIB, MIB));
            if s >= 40 {
                assert_eq!(p.state, State::Converging, "{s}: {p:?}");
                let copy = p.copy_rate.unwrap() / MIB as f64;
                assert!((0.5..=1.6).contains(&copy), "{s}: {copy}");
            }
        }
    }

    #[test]
    fn the_readings_before_its_sizing_are_not_the_base_of_its_rates() {
        // 0/0 for a moment, then a copy that moves once and stands still: rates over the sized readings.
        let mut t = Tracker::new(Settings::default());
        t.add(reading(0.0, 0, 0, 0));
        t.add(reading(0.1, MIB, 64 * MIB, 0));
        let mut p = None;
        for s in 1..=8u64 {
            p = Some(t.add(reading(s as f64, 4 * MIB, 64 * MIB, 0)));
        }
        assert!(p.unwrap().copy_rate.is_some(), "{p:?}");
    }

    #[test]
    fn a_cursor_stuck_longer_than_it_ever_stepped_has_the_windows_rate_not_its_past() {
        // 10 MiB/s for 100 s, read every second, then a target that stops accepting writes.
        let mut t = Tracker::new(Settings::default());
        for s in 0..=100u64 {
            t.add(reading(s as f64, s * 10 * MIB, 4096 * MIB, 0));
        }
        let mut p = None;
        for s in 101..=112u64 {
            p = Some(t.add(reading(s as f64, 1000 * MIB, 4096 * MIB, 0)));
        }
        let p = p.unwrap();
        assert_eq!((p.copy_rate, p.state, p.eta), (Some(0.0), State::Diverging, None));
    }

    #[test]
    fn no_rate_spans_a_reading_qemu_had_not_sized() {
        let mut t = Tracker::new(Settings::default());
        t.add(reading(0.0, 0, 0, 0));
        assert_eq!(t.add(reading(2.0, MIB, 64 * MIB, 0)).copy_rate, None);
        let mut t = Tracker::new(Settings::default());
        t.add(reading(0.0, 0, 64 * MIB, 0));
        assert_eq!(t.add(reading(2.0, 0, 0, 0)).copy_rate, None);
    }

    #[test]
    fn a_job_that_does_not_move_is_not_converging() {
        let p = run(0, 0, 0, 64 * MIB, 5);
        assert_eq!((p.state, p.net_rate), (State::Diverging, Some(0.0)));
    }

    #[test]
    fn a_long_scan_at_0_0_is_neither_stalled_nor_without_progress() {
        let mut t = Tracker::new(Settings::default());
        for s in 0..=600u64 {
            let p = t.add(reading(s as f64, 0, 0, 0));
            assert_eq!((p.state, p.since_net_progress), (State::Measuring, Duration::ZERO));
        }
        // Sized at last: its clocks start there.
        let p = t.add(reading(601.0, 0, 64 * MIB, 0));
        assert_eq!(
            (p.since_cursor_moved, p.since_net_progress),
            (Duration::ZERO, Duration::ZERO)
        );
        assert_ne!(t.add(reading(602.0, 0, 64 * MIB, 0)).state, State::Stalled);
    }

    #[test]
    fn libvirts_numbers_are_taken_back_to_qemus() {
        // 0/1: not sized; end - 1 before ready: caught up; anything else as it is.
        assert_eq!(Reading::of_libvirt(0, 1, 0, false, 5).len, 0);
        let r = Reading::of_libvirt(99, 100, 7, false, 5);
        assert_eq!((r.offset, r.len, r.speed, r.at_us), (100, 100, 7, 5));
        let r = Reading::of_libvirt(99, 100, 0, true, 0);
        assert_eq!((r.offset, r.len, r.ready), (99, 100, true));
        let r = Reading::of_libvirt(40, 100, 0, false, 0);
        assert_eq!((r.offset, r.len), (40, 100));
        let mut t = Tracker::new(Settings::default());
        assert_eq!(t.add(Reading::of_libvirt(0, 1, 0, false, 0)).state, State::Measuring);
        assert_eq!(
            t.add(Reading::of_libvirt(99, 100, 0, false, 1)).state,
            State::Converging
        );
    }

    #[test]
    fn codes_and_names_are_distinct() {
        let mut names: Vec<_> = State::ALL.iter().map(|s| s.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 8);
        for (i, s) in State::ALL.iter().enumerate() {
            assert_eq!(s.code(), i as i32);
        }
    }
}
