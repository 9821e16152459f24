//! How jobs ended, for the exporter: counters by type and outcome, each disk's last ending (kept a while after
//! the job is gone), and how long the jobs ran. Fed with the lives `events` tells (libvirt's block job events
//! and readings, `virt::stream`), or, for QMP sockets (which may be a manager's only monitor, never held), by
//! comparing one reading with the next (`Endings::compare`).
//!
//! An ending is `completed`, `failed` (with QEMU's error text where the source has it: a QMP listing of a
//! concluded job; libvirt's event carries none), `canceled`, or `unknown`: the job left while nothing told how
//! (events lost with a connection, a socket's job gone between two readings), or a socket's copy or commit
//! ended without an error (a pivot and an abort after ready look alike there). Never a success by default.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use blockjobinfo::translate::RawJob;
use blockjobinfo::verdict;
use blockjobinfo::watch::Happened;
use blockjobinfo::Outcome;

use crate::exposition::Exposition;
use crate::list::Snapshot;

/// The longest error text kept as a label value (in characters): QEMU's are one line, a label is not a log.
pub const ERROR_CHARS: usize = 200;

/// Upper bounds of the duration histogram's buckets, in seconds: a second to a day.
const BUCKETS: [f64; 10] = [
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    12.0 * 3600.0,
    86400.0,
];

/// The outcome's label value.
pub fn outcome_label(happened: &Happened) -> Option<(&'static str, String)> {
    match happened {
        Happened::Ended(Outcome::Failed(why)) => Some(("failed", why.clone())),
        Happened::Ended(Outcome::Cancelled) => Some(("canceled", String::new())),
        Happened::Ended(Outcome::Reached) => Some(("completed", String::new())),
        // Not an ending a watch tells; were it ever one, never a success by default.
        Happened::Ended(Outcome::GoneBeforeReady | Outcome::TimedOut) => Some(("unknown", String::new())),
        Happened::Vanished => Some(("unknown", String::new())),
        _ => None,
    }
}

/// A QMP listing's ending as the exporter counts it. A copy or a commit that ended without an error was ready
/// (a mirror can only complete once ready; an active commit too) and was then either pivoted or cancelled:
/// QEMU lists both alike, and only the devices around the job at that moment tell them apart (libvirt knows
/// which it asked for). A reading cannot tell, so it says `unknown`, never a success it cannot vouch for.
pub fn qmp_outcome(raw: &RawJob, o: Outcome) -> (&'static str, String) {
    match o {
        Outcome::Reached if matches!(raw.job_type.as_str(), "mirror" | "commit") => ("unknown", String::new()),
        o => outcome_label(&Happened::Ended(o)).unwrap_or(("unknown", String::new())),
    }
}

struct Last {
    job_type: String,
    outcome: &'static str,
    error: String,
    ended: SystemTime,
    ran: Option<Duration>,
    at: Instant,
}

#[derive(Default)]
struct Durations {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// What the exporter knows of endings.
pub struct Endings {
    /// Its hosts are QMP sockets (labels `socket`, `device`), not domains.
    pub by_socket: bool,
    /// Under libvirt: whether its block job events are being heard (None: endings come from readings).
    pub listening: Option<bool>,
    keep: Duration,
    totals: BTreeMap<(String, &'static str), u64>,
    durations: BTreeMap<String, Durations>,
    last: BTreeMap<(String, String), Last>,
    /// Jobs running, by (domain or socket, disk or device): when first seen.
    running: BTreeMap<(String, String), Instant>,
    /// `compare`'s last reading of each socket's jobs: (device, type) and whether its ending was counted (a
    /// concluded job stays listed until dismissed).
    listed: BTreeMap<(String, String), (String, bool, u64)>,
    /// Sockets `compare` has read at least once.
    sockets: BTreeSet<String>,
    /// Jobs known to run now, with their type: what `--state-file` keeps across a restart.
    alive: BTreeMap<(String, String), String>,
    /// `alive` as last written to the state file.
    saved: Option<BTreeMap<(String, String), String>>,
    /// Jobs the exporter before this one knew to run (its state file): each one's ending is counted (unknown
    /// when nothing says how), once the first reading of its domain or socket has shown whether it still runs.
    restored: BTreeMap<(String, String), String>,
}

impl Endings {
    /// Each disk's last ending is kept for `keep` after it.
    pub fn new(keep: Duration) -> Endings {
        Endings {
            by_socket: false,
            listening: None,
            keep,
            totals: BTreeMap::new(),
            durations: BTreeMap::new(),
            last: BTreeMap::new(),
            running: BTreeMap::new(),
            listed: BTreeMap::new(),
            sockets: BTreeSet::new(),
            alive: BTreeMap::new(),
            saved: None,
            restored: BTreeMap::new(),
        }
    }

    /// The jobs running now, as the state file keeps them, when they changed since the last time it was asked
    /// (and `saved` says it was written).
    pub fn state_to_save(&self) -> Option<String> {
        if self.saved.as_ref() == Some(&self.alive) {
            return None;
        }
        let jobs: Vec<serde_json::Value> = self
            .alive
            .iter()
            .map(|((h, d), t)| serde_json::json!({"host": h, "disk": d, "type": t}))
            .collect();
        Some(serde_json::json!({"by_socket": self.by_socket, "running": jobs}).to_string() + "\n")
    }

    /// The state file was written with `alive` as it is now.
    pub fn saved(&mut self) {
        self.saved = Some(self.alive.clone());
    }

    /// What the exporter before this one knew to run (its state file's text): those jobs' endings are counted
    /// once this exporter's first look shows they are gone. A file of the other mode (domains for sockets) or
    /// one that does not parse restores nothing, and says why.
    pub fn restore(&mut self, text: &str) -> Result<usize, String> {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not the state's JSON: {e}"))?;
        if v["by_socket"].as_bool() != Some(self.by_socket) {
            return Err("it was written for the other kind of host (domains, or QMP sockets)".into());
        }
        let jobs = v["running"].as_array().ok_or("no list of running jobs")?;
        let mut restored = BTreeMap::new();
        for j in jobs {
            let (Some(h), Some(d), Some(t)) = (j["host"].as_str(), j["disk"].as_str(), j["type"].as_str()) else {
                return Err(format!("a job without host, disk and type: {j}"));
            };
            restored.insert((h.to_string(), d.to_string()), t.to_string());
        }
        self.restored = restored;
        // Written as it was read: nothing to write until something changes.
        self.alive = self.restored.clone();
        self.saved = Some(self.alive.clone());
        Ok(self.restored.len())
    }

    /// The jobs the exporter before this one knew to run: (host, disk, type). Under libvirt, its stream takes
    /// them as seen before its first reading, and tells each one's ending, or its vanishing once two readings
    /// of its domain lack it (`virt::stream`).
    pub fn restored(&self) -> Vec<(String, String, String)> {
        self.restored
            .iter()
            .map(|((h, d), t)| (h.clone(), d.clone(), t.clone()))
            .collect()
    }

    /// A job's life as `events` tells it; `job_type` is the type's label value; `at_ending`: a `Started` told
    /// only because the job's ending is (its duration is not known).
    pub fn heard(
        &mut self,
        host: &str,
        disk: &str,
        job_type: &str,
        happened: &Happened,
        now: Instant,
        at_ending: bool,
    ) {
        let key = (host.to_string(), disk.to_string());
        match happened {
            Happened::Started if at_ending => {
                self.running.remove(&key);
            }
            Happened::Started => {
                self.alive.insert(key.clone(), job_type.to_string());
                self.running.insert(key, now);
            }
            _ => {
                if let Some((outcome, error)) = outcome_label(happened) {
                    // Its ending is told: the exporter before this one's word on it is settled too.
                    self.restored.remove(&key);
                    self.alive.remove(&key);
                    self.ended(key, job_type, outcome, error, now);
                }
            }
        }
    }

    fn ended(&mut self, key: (String, String), job_type: &str, outcome: &'static str, error: String, now: Instant) {
        *self.totals.entry((job_type.to_string(), outcome)).or_default() += 1;
        // Only a job seen running has a duration (from when it was first seen): one first told by its ending has
        // none, and is left out of the histogram rather than counted as 0 s.
        let ran = self
            .running
            .remove(&key)
            .map(|since| now.saturating_duration_since(since));
        if let Some(ran) = ran {
            let d = self.durations.entry(job_type.to_string()).or_default();
            let s = ran.as_secs_f64();
            for (n, le) in d.counts.iter_mut().zip(BUCKETS) {
                if s <= le {
                    *n += 1;
                }
            }
            d.sum += s;
            d.count += 1;
        }
        let error: String = if error.chars().count() > ERROR_CHARS {
            error
                .chars()
                .take(ERROR_CHARS - 1)
                .chain(std::iter::once('…'))
                .collect()
        } else {
            error
        };
        self.last.insert(
            key,
            Last {
                job_type: job_type.to_string(),
                outcome,
                error,
                ended: SystemTime::now(),
                ran,
                at: now,
            },
        );
    }

    /// One reading of QMP sockets against the one before: a job that left between them ended unseen
    /// (`unknown`), unless the reading before listed it concluded, when its ending was counted then; a job
    /// listed concluded is counted once, with QEMU's error. Only a socket this reading read can have lost a job.
    /// A socket's first reading counts none of the endings it lists (the exporter may have restarted: they ended
    /// before it looked, and were counted then if at all).
    pub fn compare(&mut self, snap: &Snapshot, now: Instant) {
        let unread: BTreeSet<&str> = snap.failures.iter().map(|f| f.host.as_str()).collect();
        let read: BTreeSet<&str> = snap
            .looked_at
            .iter()
            .map(String::as_str)
            .filter(|h| !unread.contains(h))
            .collect();
        let mut seen = BTreeSet::new();
        for r in &snap.rows {
            let key = (r.host.clone(), r.disk.clone());
            seen.insert(key.clone());
            let raw = r.qemu_job();
            let job_type = crate::print::type_value(r.job_type);
            // Another job under the same id, of another type or with its progress gone back: the one before
            // left between two readings, unseen (a VM restarted on its socket, an id used again at once).
            let offset = raw.offset;
            if let Some((t, false, before)) = self.listed.get(&key).cloned() {
                if t != job_type || offset < before {
                    self.listed.remove(&key);
                    self.alive.remove(&key);
                    self.ended(key.clone(), &t, "unknown", String::new(), now);
                }
            }
            let ending = Some(&raw)
                .filter(|j| verdict::finished(j))
                .and_then(|j| verdict::judge(j, blockjobinfo::Until::Gone, false))
                .map(|o| qmp_outcome(&raw, o));
            let counted = match (self.listed.get(&key).map(|(_, counted, _)| *counted), ending) {
                // Still listed concluded: the ending counted already.
                (Some(true), Some(_)) => true,
                // Running again under an id whose last job was counted: a new job (the last one dismissed and
                // its id used again, as QEMU's default id, the device's name, is).
                (Some(true), None) | (None, None) => {
                    self.running.insert(key.clone(), now);
                    false
                }
                (Some(false), None) => false,
                // Concluded on a socket's first reading: it ended before the exporter looked (counted then,
                // unless the exporter before this one knew it running: it ended while none looked).
                (None, Some(_)) if !self.sockets.contains(&r.host) && !self.restored.contains_key(&key) => true,
                (_, Some((outcome, error))) => {
                    self.ended(key.clone(), &job_type, outcome, error, now);
                    true
                }
            };
            self.restored.remove(&key);
            match counted {
                true => self.alive.remove(&key),
                false => self.alive.insert(key.clone(), job_type.clone()),
            };
            let offset = self.listed.get(&key).map_or(offset, |(_, _, o)| offset.max(*o));
            self.listed.insert(key, (job_type, counted, offset));
        }
        // What the exporter before this one knew to run and a reading of its socket lacks (or its socket is gone:
        // its VM went away): ended while none looked.
        let lost: Vec<(String, String)> = self
            .restored
            .keys()
            .filter(|k| !seen.contains(*k) && snap.tells_of(&k.0))
            .cloned()
            .collect();
        for key in lost {
            if let Some(job_type) = self.restored.remove(&key) {
                self.alive.remove(&key);
                self.ended(key, &job_type, "unknown", String::new(), now);
            }
        }
        // A job its socket's reading lacks, or whose socket is gone (its VM went away), left unseen.
        let gone: Vec<(String, String)> = self
            .listed
            .keys()
            .filter(|k| !seen.contains(*k) && snap.tells_of(&k.0))
            .cloned()
            .collect();
        for key in gone {
            if let Some((job_type, counted, _)) = self.listed.remove(&key) {
                self.alive.remove(&key);
                if !counted {
                    self.ended(key, &job_type, "unknown", String::new(), now);
                }
            }
        }
        self.sockets.extend(read.into_iter().map(str::to_string));
        self.sockets.retain(|s| !snap.is_gone(s));
    }

    /// The endings' families, forgetting last endings older than the time they are kept.
    pub fn exposition(&mut self, now: Instant) -> String {
        let mut e = Exposition::default();
        let (host, disk) = match self.by_socket {
            true => ("socket", "device"),
            false => ("domain", "disk"),
        };
        self.render(&mut e, host, disk, now);
        if let Some(yes) = self.listening {
            let up = e.gauge(
                "blockjobinfo_block_job_events_up",
                "Whether libvirt's block job events are being heard: 1, or 0 (libvirtd down or restarting, or not \
                 yet connected); meanwhile endings are not counted, and jobs that leave are counted unknown.",
                &[],
            );
            e.set(up, &[], if yes { 1.0 } else { 0.0 });
        }
        e.render()
    }

    /// Adds the endings' families to `e`, forgetting last endings older than the time they are kept.
    fn render(&mut self, e: &mut Exposition, host: &str, disk: &str, now: Instant) {
        let keep = self.keep;
        self.last.retain(|_, l| now.saturating_duration_since(l.at) <= keep);
        let totals = e.counter(
            "blockjobinfo_block_jobs_ended_total",
            "Block jobs ended since the exporter started, by type and outcome: completed, failed, canceled, or \
             unknown (the job left while nothing told how: events lost with a connection, a QMP socket's job \
             gone between two readings, or a QMP socket's copy or commit ended without an error, which a pivot \
             and an abort after ready both do).",
            &["type", "outcome"],
        );
        // Every type and outcome from 0, so that the first ending of each is an increase Prometheus sees.
        for t in ["pull", "copy", "commit", "active_commit", "backup"] {
            for o in ["completed", "failed", "canceled", "unknown"] {
                e.set(totals, &[t, o], 0.0);
            }
        }
        for ((t, o), n) in &self.totals {
            e.set(totals, &[t, o], *n as f64);
        }
        let last = e.gauge(
            "blockjobinfo_block_job_last_ended_timestamp_seconds",
            "When the disk's last block job ended (seconds since the epoch), with its type, outcome and QEMU's \
             error text where the source gives one (QMP; libvirt's event carries none). Kept a while after the job \
             is gone (--keep-endings).",
            &[host, disk, "type", "outcome", "error"],
        );
        let ran = e.gauge(
            "blockjobinfo_block_job_last_duration_seconds",
            "How long the disk's last block job ran, from when the exporter first saw it.",
            &[host, disk],
        );
        for ((h, d), l) in &self.last {
            let at = l.ended.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            e.set(last, &[h, d, &l.job_type, l.outcome, &l.error], at.as_secs_f64());
            if let Some(r) = l.ran {
                e.set(ran, &[h, d], r.as_secs_f64());
            }
        }
        let hist = e.histogram(
            "blockjobinfo_block_job_duration_seconds",
            "How long block jobs ran before they ended, from when the exporter first saw them (jobs first seen at \
             their ending are not counted).",
            &["type"],
        );
        for (t, d) in &self.durations {
            let buckets: Vec<(f64, u64)> = BUCKETS.iter().copied().zip(d.counts).collect();
            e.set_histogram(hist, &[t], &buckets, d.sum, d.count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::list::{Failure, Row};

    fn row(host: &str, device: &str, status: &str, error: Option<&str>) -> Row {
        typed_row(host, device, "mirror", status, error)
    }

    fn typed_row(host: &str, device: &str, qemu_type: &str, status: &str, error: Option<&str>) -> Row {
        // As `list` reads a socket's job.
        let raw = serde_json::json!({"qemu": {"type": qemu_type, "offset": 5, "len": 10, "speed": 0,
            "ready": false, "status": status, "paused": false, "io-status": "ok", "error": error}});
        Row {
            host: host.into(),
            disk: device.into(),
            job_type: blockjobinfo::translate::job_type(qemu_type),
            cur: 5,
            end: 10,
            bandwidth: 0,
            phase: "running",
            paused: Some(false),
            io_status: Some("ok".into()),
            raw,
        }
    }

    fn snap(rows: Vec<Row>, failures: &[&str]) -> Snapshot {
        Snapshot {
            kind: "socket",
            looked_at: vec!["/s/a".into(), "/s/b".into()],
            rows,
            failures: failures
                .iter()
                .map(|h| Failure {
                    host: h.to_string(),
                    error: "not answering".into(),
                })
                .collect(),
            at: Instant::now(),
            calls: None,
        }
    }

    fn text(e: &mut Endings, now: Instant) -> String {
        let mut x = Exposition::default();
        e.render(&mut x, "socket", "device", now);
        x.render()
    }

    fn totals(e: &Endings) -> Vec<(String, &'static str, u64)> {
        e.totals.iter().map(|((t, o), n)| (t.clone(), *o, *n)).collect()
    }

    fn state(by_socket: bool, jobs: &[(&str, &str, &str)]) -> String {
        let running: Vec<serde_json::Value> = jobs
            .iter()
            .map(|(h, d, t)| serde_json::json!({"host": h, "disk": d, "type": t}))
            .collect();
        serde_json::json!({"by_socket": by_socket, "running": running}).to_string()
    }

    #[test]
    fn a_restarted_exporter_counts_the_sockets_jobs_that_ended_while_none_ran() {
        let t = Instant::now();
        let mut e = Endings::new(Duration::from_secs(3600));
        e.by_socket = true;
        let before = [
            ("/s/a", "m", "copy"),
            ("/s/a", "b", "backup"),
            ("/s/a", "r", "pull"),
            ("/s/b", "x", "pull"),
            ("/s/gone", "y", "commit"),
        ];
        assert_eq!(e.restore(&state(true, &before)), Ok(5));
        // Read as it was written: nothing to write yet.
        assert_eq!(e.state_to_save(), None);
        // /s/a read: m gone unseen, b concluded with its error (counted although this is the socket's first
        // reading), r still running; /s/b not answering keeps x; /s/gone left the glob with its VM.
        e.compare(
            &snap(
                vec![
                    typed_row("/s/a", "b", "backup", "concluded", Some("No space left on device")),
                    typed_row("/s/a", "r", "stream", "running", None),
                ],
                &["/s/b"],
            ),
            t,
        );
        assert_eq!(
            totals(&e),
            [
                ("backup".into(), "failed", 1),
                ("commit".into(), "unknown", 1),
                ("copy".into(), "unknown", 1),
            ]
        );
        assert!(text(&mut e, t).contains("error=\"No space left on device\""));
        // What runs now is to be written: r, and x (its socket not read yet).
        let saved = e.state_to_save().expect("changed");
        assert!(
            saved.contains("\"r\"") && saved.contains("\"x\"") && !saved.contains("\"m\""),
            "{saved}"
        );
        e.saved();
        assert_eq!(e.state_to_save(), None);
        // /s/b answers: x is gone.
        e.compare(&snap(vec![typed_row("/s/a", "r", "stream", "running", None)], &[]), t);
        assert!(totals(&e).contains(&("pull".into(), "unknown", 1)), "{:?}", totals(&e));
        // r ends as any job does.
        e.compare(&snap(vec![typed_row("/s/a", "r", "stream", "concluded", None)], &[]), t);
        assert!(
            totals(&e).contains(&("pull".into(), "completed", 1)),
            "{:?}",
            totals(&e)
        );
        assert!(!e.state_to_save().expect("changed").contains("\"r\""));
    }

    #[test]
    fn a_restarted_exporter_counts_the_domains_jobs_that_ended_while_none_ran() {
        let t = Instant::now();
        let mut e = Endings::new(Duration::from_secs(3600));
        let before = [("d1", "vda", "copy"), ("d2", "vdb", "pull"), ("d3", "vdc", "backup")];
        assert_eq!(e.restore(&state(false, &before)), Ok(3));
        // Handed to libvirt's stream, which knows them from before its first reading.
        let mut known = e.restored();
        known.sort();
        assert_eq!(known[1], ("d2".into(), "vdb".into(), "pull".into()));
        // It tells an ending (d3: its event names it) and a job two readings lacked (d2); d1 runs on.
        e.heard("d3", "vdc", "backup", &Happened::Ended(Outcome::Cancelled), t, false);
        e.heard("d2", "vdb", "pull", &Happened::Vanished, t, false);
        assert_eq!(
            totals(&e),
            [("backup".into(), "canceled", 1), ("pull".into(), "unknown", 1)]
        );
        let saved = e.state_to_save().expect("changed");
        assert!(
            saved.contains("\"d1\"") && !saved.contains("\"d2\"") && !saved.contains("\"d3\""),
            "{saved}"
        );
    }

    #[test]
    fn a_job_replaced_between_readings_or_gone_with_its_socket_is_unknown() {
        let t = Instant::now();
        let mut e = Endings::new(Duration::from_secs(3600));
        e.by_socket = true;
        let at = |mut r: Row, offset: u64| {
            r.raw["qemu"]["offset"] = serde_json::json!(offset);
            r
        };
        let a = |rows: Vec<Row>| snap(rows, &[]);
        e.compare(&a(vec![at(typed_row("/s/a", "j", "mirror", "running", None), 50)]), t);
        // Its progress went back: another job under the id.
        e.compare(&a(vec![at(typed_row("/s/a", "j", "mirror", "running", None), 10)]), t);
        assert_eq!(totals(&e), [("copy".into(), "unknown", 1)]);
        // Another type under the id.
        e.compare(&a(vec![at(typed_row("/s/a", "j", "stream", "running", None), 20)]), t);
        assert_eq!(totals(&e), [("copy".into(), "unknown", 2)]);
        // Progress that grows is the same job.
        e.compare(&a(vec![at(typed_row("/s/a", "j", "stream", "running", None), 30)]), t);
        assert_eq!(totals(&e), [("copy".into(), "unknown", 2)]);
        // Its socket gone (the VM went away): unknown; the socket forgotten.
        let mut gone = snap(vec![], &[]);
        gone.looked_at = vec!["/s/b".into()];
        e.compare(&gone, t);
        assert_eq!(
            totals(&e),
            [("copy".into(), "unknown", 2), ("pull".into(), "unknown", 1)]
        );
        assert!(!e.sockets.contains("/s/a"));
    }

    #[test]
    fn a_state_file_of_the_other_mode_or_not_json_restores_nothing() {
        let mut e = Endings::new(Duration::from_secs(3600));
        let err = e.restore(&state(true, &[("/s/a", "m", "copy")])).unwrap_err();
        assert!(err.contains("other kind of host"), "{err}");
        assert!(e.restore("{").unwrap_err().contains("not the state's JSON"));
        let half = r#"{"by_socket": false, "running": [{"host": "d", "disk": "vda", "type": "copy"}, {"host": "d"}]}"#;
        assert!(e.restore(half).is_err());
        assert!(e.restored().is_empty() && totals(&e).is_empty());
    }

    #[test]
    fn readings_count_each_ending_once_and_a_silent_leaving_as_unknown() {
        let t = Instant::now();
        let mut e = Endings::new(Duration::from_secs(3600));
        e.compare(
            &snap(
                vec![row("/s/a", "j1", "running", None), row("/s/b", "j2", "running", None)],
                &[],
            ),
            t,
        );
        // j1 concluded with an error: counted now, with QEMU's text; j2's socket not read: nothing said of it.
        let s = Duration::from_secs(30);
        e.compare(
            &snap(
                vec![row("/s/a", "j1", "concluded", Some("No space left on device"))],
                &["/s/b"],
            ),
            t + s,
        );
        // Still listed concluded: not counted twice. Then it is dismissed: counted already, not unknown.
        e.compare(
            &snap(
                vec![row("/s/a", "j1", "concluded", Some("No space left on device"))],
                &["/s/b"],
            ),
            t + s,
        );
        e.compare(&snap(vec![row("/s/b", "j2", "running", None)], &[]), t + s);
        // j2 gone between two readings of its socket: unknown.
        e.compare(&snap(vec![], &[]), t + 2 * s);
        let out = text(&mut e, t + 2 * s);
        assert!(
            out.contains("blockjobinfo_block_jobs_ended_total{outcome=\"failed\",type=\"copy\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("blockjobinfo_block_jobs_ended_total{outcome=\"unknown\",type=\"copy\"} 1\n"),
            "{out}"
        );
        // Every type and outcome from 0.
        assert!(out.contains("{outcome=\"completed\",type=\"copy\"} 0\n"), "{out}");
        assert!(out.contains("{outcome=\"canceled\",type=\"backup\"} 0\n"), "{out}");
        assert!(out.contains("error=\"No space left on device\""), "{out}");
        assert!(
            out.contains("blockjobinfo_block_job_duration_seconds_bucket{type=\"copy\",le=\"15\"} 0\n")
                && out.contains("blockjobinfo_block_job_duration_seconds_bucket{type=\"copy\",le=\"60\"} 2\n")
                && out.contains("blockjobinfo_block_job_duration_seconds_count{type=\"copy\"} 2\n"),
            "{out}"
        );
        // A backup concluded without an error is completed; a copy so concluded was pivoted or cancelled after
        // ready, which a listing cannot tell: unknown; one cancelled before ready (QEMU's ECANCELED) canceled.
        e.compare(
            &snap(
                vec![
                    typed_row("/s/a", "j3", "backup", "concluded", None),
                    row("/s/a", "j4", "concluded", Some(blockjobinfo::verdict::CANCELED)),
                    row("/s/a", "j5", "concluded", None),
                ],
                &[],
            ),
            t + 2 * s,
        );
        let out = text(&mut e, t + 2 * s);
        assert!(out.contains("{outcome=\"completed\",type=\"backup\"} 1\n"), "{out}");
        assert!(out.contains("{outcome=\"canceled\",type=\"copy\"} 1\n"), "{out}");
        assert!(out.contains("{outcome=\"unknown\",type=\"copy\"} 2\n"), "{out}");
        assert!(out.contains("{outcome=\"completed\",type=\"copy\"} 0\n"), "{out}");
        // First seen at its ending: no duration.
        assert!(
            out.contains("blockjobinfo_block_job_duration_seconds_count{type=\"copy\"} 2\n"),
            "{out}"
        );
    }

    #[test]
    fn a_reused_id_is_a_new_job_and_a_first_reading_counts_no_ending() {
        let t = Instant::now();
        let s = Duration::from_secs(30);
        let mut e = Endings::new(Duration::from_secs(3600));
        // The exporter's first reading of /s/a lists a failure of before its time, and a running job.
        e.compare(
            &snap(
                vec![
                    typed_row("/s/a", "old", "backup", "concluded", Some("boom")),
                    typed_row("/s/a", "b", "backup", "running", None),
                ],
                &[],
            ),
            t,
        );
        // b fails; then, before the next reading, it is dismissed and a new b starts; then that one fails too.
        e.compare(
            &snap(vec![typed_row("/s/a", "b", "backup", "concluded", Some("EIO"))], &[]),
            t + s,
        );
        e.compare(
            &snap(vec![typed_row("/s/a", "b", "backup", "running", None)], &[]),
            t + 2 * s,
        );
        e.compare(
            &snap(vec![typed_row("/s/a", "b", "backup", "concluded", Some("EIO"))], &[]),
            t + 3 * s,
        );
        let out = text(&mut e, t + 3 * s);
        assert!(out.contains("{outcome=\"failed\",type=\"backup\"} 2\n"), "{out}");
        assert!(!out.contains("boom"), "{out}");
        // Each b seen running first: two durations of 30 s.
        assert!(
            out.contains("blockjobinfo_block_job_duration_seconds_sum{type=\"backup\"} 60\n"),
            "{out}"
        );
    }

    #[test]
    fn last_endings_are_kept_for_their_time_and_errors_bounded() {
        let t = Instant::now();
        let mut e = Endings::new(Duration::from_secs(60));
        e.heard("dom", "vda", "copy", &Happened::Started, t, false);
        let long = "x\"\n".repeat(300);
        let two = t + Duration::from_secs(2);
        e.heard(
            "dom",
            "vda",
            "copy",
            &Happened::Ended(Outcome::Failed(long)),
            two,
            false,
        );
        e.heard("dom", "vdb", "pull", &Happened::Vanished, two, false);
        // First seen at its ending: counted, without a duration.
        e.heard("dom", "vdc", "copy", &Happened::Started, two, true);
        e.heard("dom", "vdc", "copy", &Happened::Ended(Outcome::Cancelled), two, false);
        let out = text(&mut e, t + Duration::from_secs(60));
        let line = out
            .lines()
            .find(|l| l.contains("last_ended") && l.contains("vda"))
            .unwrap();
        let error = line.split("error=\"").nth(1).unwrap().split("\",").next().unwrap();
        // ERROR_CHARS characters: 199 of QEMU's ("x", quote, newline, ...: 67 x), then an ellipsis.
        assert_eq!(error.matches('x').count(), (ERROR_CHARS - 1).div_ceil(3), "{line}");
        assert!(error.ends_with('…'), "{line}");
        assert!(
            out.contains("blockjobinfo_block_job_last_duration_seconds{device=\"vda\",socket=\"dom\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("outcome=\"unknown\",socket=\"dom\",type=\"pull\""),
            "{out}"
        );
        assert!(
            out.contains("blockjobinfo_block_job_duration_seconds_count{type=\"copy\"} 1\n"),
            "{out}"
        );
        assert!(
            !out.contains("device=\"vdc\",socket=\"dom\"} 0"),
            "no duration for vdc: {out}"
        );
        let out = text(&mut e, t + Duration::from_secs(63));
        assert!(!out.contains("last_ended_timestamp"), "{out}");
        assert!(
            out.contains("{outcome=\"failed\",type=\"copy\"} 1\n"),
            "the counters stay: {out}"
        );
    }
}
