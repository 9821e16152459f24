//! Each job's last ending as a source heard it, for `bji_last_ending`: kept from QEMU's events as they are read
//! (by any call, any wait or the idle connection's drain thread), so an ending between two calls is not lost.
//! Pure: the source feeds it every event, the listing it reads for a job whose ending was not heard, and the
//! verdict of a wait that told the ending.
//!
//! What QEMU's events cannot tell is said `Unknown`, never guessed a success:
//! - a copy (or an active commit) that was ready and ended without an error: QEMU sends BLOCK_JOB_COMPLETED for
//!   a pivot (`block-job-complete`) and for a cancel after ready alike. libvirt knows which it asked for; a
//!   wait for gone tells them apart by the job's devices, and its verdict is taken when one ran;
//! - a commit that ended without an error where its start was not heard (a plain one completed, an active one
//!   may have been pivoted or cancelled);
//! - a job seen running whose ending was not heard (a lost connection) and that QEMU no longer lists.

use std::collections::HashMap;

use serde_json::Value;

use crate::jobs;
use crate::translate::RawJob;
use crate::verdict::{self, Outcome, CANCELED};

/// Jobs and endings kept at most (the oldest are dropped first): a source lives as long as its process.
const MAX_KEPT: usize = 1024;
/// QEMU's error text is kept up to this many bytes (C's `bji_ending.error` holds them and a NUL).
pub(crate) const MAX_ERROR_BYTES: usize = 1023;

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// QEMU completed it (a pull, a backup, a plain commit; a copy or active commit only where a wait told the
    /// pivot).
    Completed,
    /// It ended with an error: QEMU's text.
    Failed(String),
    /// It was cancelled (before ready; or after ready without a pivot, where a wait told it).
    Cancelled,
    /// How it ended is not known (see the module's notes).
    Unknown,
}

/// A job's ending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    pub ended: Ended,
    /// QEMU's job type (`mirror`, `commit`, `stream`, `backup`), "" where no event named it.
    pub job_type: String,
    /// Whether it was ready (in its mirroring phase) when it ended, as far as anything told.
    pub was_ready: bool,
    /// When it ended: QEMU's timestamp of the event, in microseconds since the epoch; for an ending found by a
    /// listing (`Unknown`, or a concluded job), when the library found it.
    pub at_us: i64,
    /// Whether `at_us` is QEMU's own timestamp.
    pub qemu_time: bool,
    /// How long it ran, from QEMU's timestamps of its creation and its ending, where both were heard.
    pub ran_us: Option<i64>,
}

struct Running {
    job_type: String,
    started_us: Option<i64>,
    ready: bool,
    order: u64,
    /// Events may have been missed since it was created (a new connection, or one not taken in): its ready,
    /// its ending, even its id's next job, may be among them.
    unsure: bool,
    /// Known to be a block job (a block job event, or QEMU's list of block jobs, named it): other jobs
    /// (`blockdev-create`, snapshots) change status too, and neither have such events nor are listed.
    block: bool,
}

/// The endings of one source's jobs.
#[derive(Default)]
pub struct Endings {
    running: HashMap<String, Running>,
    ended: HashMap<String, (u64, Ending)>,
    /// Bumped at every change: what is older is dropped first, and a wait's verdict applies only to an ending
    /// kept since it began.
    order: u64,
}

/// An event's timestamp, in microseconds since the epoch.
fn timestamp_us(ev: &Value) -> Option<i64> {
    let t = ev.get("timestamp")?;
    let s = t.get("seconds")?.as_i64()?;
    let us = t.get("microseconds")?.as_i64()?;
    // QEMU sends -1 where it has no clock.
    (s >= 0 && (0..1_000_000).contains(&us)).then(|| s.saturating_mul(1_000_000).saturating_add(us))
}

/// QEMU's error text, cut to `MAX_ERROR_BYTES` on a character's boundary.
fn cut(text: &str) -> String {
    let mut end = text.len().min(MAX_ERROR_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Drops the oldest entries of `map` until there is room for one more.
fn drop_oldest<V>(map: &mut HashMap<String, V>, age: impl Fn(&V) -> u64) {
    while map.len() >= MAX_KEPT {
        let Some(oldest) = map.iter().min_by_key(|(_, v)| age(v)).map(|(k, _)| k.clone()) else {
            return;
        };
        map.remove(&oldest);
    }
}

impl Endings {
    fn bump(&mut self) -> u64 {
        self.order += 1;
        self.order
    }

    /// Where changes stand now: a wait that began here may tell the endings kept after it (`told`).
    pub fn mark(&self) -> u64 {
        self.order
    }

    fn running(&mut self, id: &str) -> &mut Running {
        if !self.running.contains_key(id) {
            drop_oldest(&mut self.running, |r| r.order);
        }
        let order = self.bump();
        self.running.entry(id.to_string()).or_insert(Running {
            job_type: String::new(),
            started_us: None,
            ready: false,
            order,
            unsure: false,
            block: false,
        })
    }

    fn end(&mut self, id: &str, ended: Ended, job_type: &str, at: Option<i64>, now_us: i64) {
        let run = self.running.remove(id);
        let job_type = match (job_type, &run) {
            ("", Some(r)) => r.job_type.clone(),
            (t, _) => t.to_string(),
        };
        let was_ready = run.as_ref().is_some_and(|r| r.ready);
        let ran_us = match (at, run.as_ref().filter(|r| !r.unsure).and_then(|r| r.started_us)) {
            (Some(end), Some(start)) if end >= start => Some(end - start),
            _ => None,
        };
        if !self.ended.contains_key(id) {
            drop_oldest(&mut self.ended, |(o, _)| *o);
        }
        let order = self.bump();
        let ending = Ending {
            ended,
            job_type,
            was_ready,
            at_us: at.unwrap_or(now_us),
            qemu_time: at.is_some(),
            ran_us,
        };
        self.ended.insert(id.to_string(), (order, ending));
    }

    /// How a job that ended without an error ended, from what was heard of it.
    fn good_end(&mut self, id: &str, job_type: &str) -> Ended {
        if job_type == "mirror" {
            // Only after ready (QEMU 2.12.1 on: a cancel before ready is CANCELLED), and a pivot and a cancel
            // after ready are alike.
            self.running(id).ready = true;
            // `make test-breaks` (`lastend`): QEMU's "completed" taken at its word for a ready copy.
            if crate::environment::broken("lastend") {
                return Ended::Completed;
            }
            return Ended::Unknown;
        }
        let run = self.running.get(id);
        match job_type {
            "commit" => match run {
                Some(r) if r.started_us.is_some() && !r.ready && !r.unsure => Ended::Completed,
                _ => Ended::Unknown,
            },
            _ => Ended::Completed,
        }
    }

    /// Takes in an event QEMU sent (any event: those about no job change nothing).
    pub fn event(&mut self, ev: &Value, now_us: i64) {
        let Some(name) = ev.get("event").and_then(Value::as_str) else {
            return;
        };
        let data = ev.get("data");
        let field = |k: &str| data.and_then(|d| d.get(k)).and_then(Value::as_str);
        let at = timestamp_us(ev);
        match name {
            "JOB_STATUS_CHANGE" => {
                let (Some(id), Some(status)) = (field("id"), field("status")) else {
                    return;
                };
                match status {
                    // A new job (an id used again is a new job: its earlier ending stays until this one ends).
                    // A new job. Its id still running means the job before it ended unheard (QEMU frees an id
                    // only then): unknown, if it was a block job (or may have been).
                    "created" => {
                        if self.running.get(id).is_some_and(|r| r.block || r.unsure) {
                            self.end(id, Ended::Unknown, "", None, now_us);
                        }
                        self.running.remove(id);
                        self.running(id).started_us = at;
                    }
                    // Only copies and active commits are ever ready.
                    "ready" => {
                        let run = self.running(id);
                        run.ready = true;
                        run.block = true;
                    }
                    // Dismissed. A block job's ending was told by BLOCK_JOB_COMPLETED or CANCELLED before it
                    // concluded; one still running here ended without (it never started, or the event went
                    // unheard): unknown. A job of another kind is forgotten.
                    "null" => {
                        if let Some(run) = self.running.get(id) {
                            match run.block || run.unsure || self.ended.contains_key(id) {
                                true => self.end(id, Ended::Unknown, "", at, now_us),
                                false => {
                                    self.running.remove(id);
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            "BLOCK_JOB_READY" => {
                let (Some(id), job_type) = (field("device"), field("type").unwrap_or("")) else {
                    return;
                };
                let run = self.running(id);
                run.ready = true;
                run.block = true;
                if !job_type.is_empty() {
                    run.job_type = job_type.to_string();
                }
            }
            // Paused or going on after an I/O error: no ending, but a block job.
            "BLOCK_JOB_ERROR" => {
                if let Some(id) = field("device") {
                    self.running(id).block = true;
                }
            }
            "BLOCK_JOB_COMPLETED" => {
                let Some(id) = field("device") else { return };
                let job_type = field("type").unwrap_or("");
                let ended = match field("error") {
                    Some(CANCELED) => Ended::Cancelled,
                    Some(e) => Ended::Failed(cut(e)),
                    None => self.good_end(id, job_type),
                };
                self.end(id, ended, job_type, at, now_us);
            }
            "BLOCK_JOB_CANCELLED" => {
                let Some(id) = field("device") else { return };
                let job_type = field("type").unwrap_or("");
                self.end(id, Ended::Cancelled, job_type, at, now_us);
            }
            _ => {}
        }
    }

    /// The job ids `device` names: itself where a job of that id was heard, or else libvirt's jobs of the disk
    /// `device` (`copy-vda-libvirt-1-format` for `vda`), as `jobs::select` reads a name.
    fn ids(&self, device: &str) -> Vec<String> {
        let known = self.running.keys().chain(self.ended.keys());
        if self.running.contains_key(device) || self.ended.contains_key(device) {
            return vec![device.to_string()];
        }
        let mut ids: Vec<String> = known
            .filter(|id| jobs::is_libvirt_job_of(id, device))
            .cloned()
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// Events may have been missed (a new connection, or an event not taken in): every job running now may
    /// have changed unheard.
    pub fn gap(&mut self) {
        for r in self.running.values_mut() {
            r.unsure = true;
        }
    }

    /// The jobs `device` names that were seen running by `mark` and whose ending was not heard: the caller
    /// reads QEMU's list (after `mark`) for them (`listed`).
    pub fn unsettled(&self, device: &str, mark: u64) -> Vec<String> {
        let known = |id: &String| self.running.get(id).is_some_and(|r| r.order <= mark);
        self.ids(device).into_iter().filter(known).collect()
    }

    /// What QEMU's list (read after every event before it was taken in) says of a job whose ending was not
    /// heard: still running, concluded (read with its error), or gone unseen (a block job's ending unknown;
    /// a job never known as a block job is forgotten: QEMU lists no other kind).
    pub fn listed(&mut self, id: &str, job: Option<&RawJob>, now_us: i64) {
        if !self.running.contains_key(id) {
            return;
        }
        match job {
            Some(j) if verdict::finished(j) => {
                let ended = match j.error.as_deref() {
                    Some(CANCELED) => Ended::Cancelled,
                    Some(e) => Ended::Failed(cut(e)),
                    None => self.good_end(id, &j.job_type),
                };
                let job_type = j.job_type.clone();
                self.end(id, ended, &job_type, None, now_us);
            }
            Some(j) => self.seen_listed(std::slice::from_ref(j)),
            // Not a block job's: never one to end here.
            // Not a block job's (never named by a block job event or QEMU's list, nor seen across a gap, where
            // either may have gone unheard): never one to end here.
            None if !self.running.get(id).is_some_and(|r| r.block || r.unsure) => {
                self.running.remove(id);
            }
            None => self.end(id, Ended::Unknown, "", None, now_us),
        }
    }

    /// QEMU's list of block jobs: each job in it is a block job, ready if it says so (an event missed is read
    /// here), whenever its creation was heard.
    pub fn seen_listed(&mut self, jobs: &[RawJob]) {
        for j in jobs {
            if let Some(run) = self.running.get_mut(&j.device) {
                run.block = true;
                run.ready |= verdict::is_ready(j);
                if run.job_type.is_empty() {
                    run.job_type = j.job_type.clone();
                }
            }
        }
    }

    /// A wait that began at `mark` told how `id` ended: it settles an ending kept since then that events alone
    /// left unknown (a ready copy's pivot or cancel).
    pub fn told(&mut self, id: &str, mark: u64, outcome: &Outcome) {
        let told = match outcome {
            Outcome::Reached => Ended::Completed,
            Outcome::Cancelled => Ended::Cancelled,
            Outcome::Failed(e) => Ended::Failed(cut(e)),
            Outcome::GoneBeforeReady | Outcome::TimedOut => return,
        };
        if let Some((order, ending)) = self.ended.get_mut(id) {
            if *order > mark && ending.ended == Ended::Unknown {
                ending.ended = told;
            }
        }
    }

    /// The last ending heard of the jobs `device` names (the latest, where a disk had several), if any.
    pub fn last(&self, device: &str) -> Option<Ending> {
        let ids = self.ids(device);
        let ended = ids.iter().filter_map(|id| self.ended.get(id));
        ended.max_by_key(|(order, _)| *order).map(|(_, e)| e.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(name: &str, data: Value, s: i64) -> Value {
        json!({"event": name, "data": data, "timestamp": {"seconds": s, "microseconds": 5}})
    }

    fn status(e: &mut Endings, id: &str, st: &str, s: i64) {
        e.event(&ev("JOB_STATUS_CHANGE", json!({"id": id, "status": st}), s), 0);
    }

    fn raw(id: &str, job_type: &str, status: &str, error: Option<&str>) -> RawJob {
        let mut v = json!({"device": id, "type": job_type, "len": 10, "offset": 10, "busy": false,
            "paused": false, "speed": 0, "ready": false, "status": status, "io-status": "ok"});
        if let Some(e) = error {
            v["error"] = json!(e);
        }
        crate::jobs::parse_jobs(&json!([v])).unwrap().remove(0)
    }

    #[test]
    fn a_pull_that_completes_is_completed_with_qemus_times() {
        let mut e = Endings::default();
        status(&mut e, "j", "created", 100);
        status(&mut e, "j", "running", 100);
        e.event(
            &ev("BLOCK_JOB_COMPLETED", json!({"device": "j", "type": "stream"}), 107),
            0,
        );
        let got = e.last("j").unwrap();
        assert_eq!(got.ended, Ended::Completed);
        assert_eq!(got.job_type, "stream");
        assert_eq!(got.at_us, 107_000_005);
        assert!(got.qemu_time);
        assert_eq!(got.ran_us, Some(7_000_000));
        assert!(!got.was_ready);
        assert!(e.unsettled("j", u64::MAX).is_empty());
    }

    #[test]
    fn a_failure_keeps_qemus_error_cut_on_a_character() {
        let mut e = Endings::default();
        let long = format!("{}é", "x".repeat(MAX_ERROR_BYTES - 1));
        e.event(
            &ev(
                "BLOCK_JOB_COMPLETED",
                json!({"device": "j", "type": "backup", "error": long}),
                3,
            ),
            0,
        );
        match e.last("j").unwrap().ended {
            Ended::Failed(t) => assert_eq!(t, "x".repeat(MAX_ERROR_BYTES - 1)),
            other => panic!("{other:?}"),
        }
        e.event(
            &ev(
                "BLOCK_JOB_COMPLETED",
                json!({"device": "k", "type": "stream", "error": CANCELED}),
                3,
            ),
            0,
        );
        assert_eq!(e.last("k").unwrap().ended, Ended::Cancelled);
        e.event(
            &ev("BLOCK_JOB_CANCELLED", json!({"device": "l", "type": "mirror"}), 3),
            0,
        );
        let l = e.last("l").unwrap();
        assert_eq!((l.ended, l.ran_us), (Ended::Cancelled, None));
    }

    #[test]
    fn a_ready_copy_that_ends_well_is_unknown_until_a_wait_tells_it() {
        let mut e = Endings::default();
        status(&mut e, "c", "created", 1);
        let mark = e.mark();
        e.event(&ev("BLOCK_JOB_READY", json!({"device": "c", "type": "mirror"}), 2), 0);
        e.event(
            &ev("BLOCK_JOB_COMPLETED", json!({"device": "c", "type": "mirror"}), 3),
            0,
        );
        let got = e.last("c").unwrap();
        assert_eq!((got.ended.clone(), got.was_ready), (Ended::Unknown, true));
        // A wait that began after the ending tells nothing of it.
        e.told("c", e.mark(), &Outcome::Cancelled);
        assert_eq!(e.last("c").unwrap().ended, Ended::Unknown);
        e.told("c", mark, &Outcome::Cancelled);
        assert_eq!(e.last("c").unwrap().ended, Ended::Cancelled);
        // A told ending is not told again otherwise.
        e.told("c", mark, &Outcome::Reached);
        assert_eq!(e.last("c").unwrap().ended, Ended::Cancelled);
        // A copy first heard at its ending: it must have been ready.
        e.event(
            &ev("BLOCK_JOB_COMPLETED", json!({"device": "d", "type": "mirror"}), 3),
            0,
        );
        assert!(e.last("d").unwrap().was_ready);
    }

    #[test]
    fn a_commit_is_completed_only_where_its_start_and_no_ready_were_heard() {
        let mut e = Endings::default();
        status(&mut e, "p", "created", 1);
        e.event(
            &ev("BLOCK_JOB_COMPLETED", json!({"device": "p", "type": "commit"}), 2),
            0,
        );
        assert_eq!(e.last("p").unwrap().ended, Ended::Completed);
        status(&mut e, "a", "created", 1);
        status(&mut e, "a", "ready", 1);
        e.event(
            &ev("BLOCK_JOB_COMPLETED", json!({"device": "a", "type": "commit"}), 2),
            0,
        );
        assert_eq!(e.last("a").unwrap().ended, Ended::Unknown);
        e.event(
            &ev("BLOCK_JOB_COMPLETED", json!({"device": "u", "type": "commit"}), 2),
            0,
        );
        assert_eq!(e.last("u").unwrap().ended, Ended::Unknown);
    }

    #[test]
    fn a_job_whose_ending_was_not_heard_is_settled_by_the_list() {
        let mut e = Endings::default();
        status(&mut e, "g", "created", 1);
        assert_eq!(e.unsettled("g", u64::MAX), ["g"]);
        e.listed("g", Some(&raw("g", "stream", "running", None)), 50);
        assert!(!e.unsettled("g", u64::MAX).is_empty() && e.last("g").is_none());
        e.listed("g", None, 50);
        let got = e.last("g").unwrap();
        assert_eq!(
            (got.ended, got.at_us, got.qemu_time, got.job_type.as_str()),
            (Ended::Unknown, 50, false, "stream")
        );
        status(&mut e, "f", "created", 1);
        e.listed(
            "f",
            Some(&raw("f", "backup", "concluded", Some("No space left on device"))),
            60,
        );
        assert_eq!(
            e.last("f").unwrap().ended,
            Ended::Failed("No space left on device".into())
        );
        status(&mut e, "x", "created", 1);
        e.listed("x", Some(&raw("x", "stream", "concluded", Some(CANCELED))), 60);
        assert_eq!(e.last("x").unwrap().ended, Ended::Cancelled);
        // A job never seen running is not settled by a list that lacks it.
        e.listed("never", None, 60);
        assert!(e.last("never").is_none());
    }

    #[test]
    fn a_reused_id_is_a_new_job_and_its_old_ending_stays_until_it_ends() {
        let mut e = Endings::default();
        e.event(
            &ev("BLOCK_JOB_CANCELLED", json!({"device": "j", "type": "stream"}), 3),
            0,
        );
        status(&mut e, "j", "created", 4);
        assert_eq!(e.last("j").unwrap().ended, Ended::Cancelled);
        e.event(
            &ev("BLOCK_JOB_COMPLETED", json!({"device": "j", "type": "stream"}), 9),
            0,
        );
        let got = e.last("j").unwrap();
        assert_eq!((got.ended, got.ran_us), (Ended::Completed, Some(5_000_000)));
        // Dismissed jobs and other kinds of job are forgotten.
        status(&mut e, "create0", "created", 1);
        status(&mut e, "create0", "null", 2);
        assert!(e.unsettled("create0", u64::MAX).is_empty());
    }

    #[test]
    fn a_disk_names_libvirts_jobs_of_it_and_gets_the_latest_ending() {
        let mut e = Endings::default();
        e.event(
            &ev(
                "BLOCK_JOB_CANCELLED",
                json!({"device": "copy-vda-libvirt-1-format", "type": "mirror"}),
                3,
            ),
            0,
        );
        status(&mut e, "pull-vda-libvirt-3-format", "created", 4);
        assert_eq!(e.unsettled("vda", u64::MAX), ["pull-vda-libvirt-3-format"]);
        assert_eq!(e.last("vda").unwrap().ended, Ended::Cancelled);
        let failed = json!({"device": "pull-vda-libvirt-3-format", "type": "stream", "error": "Input/output error"});
        e.event(&ev("BLOCK_JOB_COMPLETED", failed, 5), 0);
        assert_eq!(e.last("vda").unwrap().ended, Ended::Failed("Input/output error".into()));
        // Another disk's jobs, and a name that is a prefix of the disk's, are not its own.
        assert!(e.last("vdb").is_none() && e.last("vd").is_none());
        // The job's own id names only it.
        assert_eq!(e.last("copy-vda-libvirt-1-format").unwrap().ended, Ended::Cancelled);
    }

    #[test]
    fn ready_is_heard_from_either_event_and_the_type_from_the_first_that_names_it() {
        let mut e = Endings::default();
        // An active commit: its READY event alone says it was ready, and its good end is then unknown.
        status(&mut e, "a", "created", 1);
        e.event(&ev("BLOCK_JOB_READY", json!({"device": "a", "type": "commit"}), 2), 0);
        e.event(
            &ev("BLOCK_JOB_COMPLETED", json!({"device": "a", "type": "commit"}), 3),
            0,
        );
        let got = e.last("a").unwrap();
        assert_eq!((got.ended, got.was_ready), (Ended::Unknown, true));
        // The READY event names the type of a job whose creation did not: a vanished job keeps it.
        status(&mut e, "v", "created", 1);
        e.event(&ev("BLOCK_JOB_READY", json!({"device": "v", "type": "mirror"}), 2), 0);
        e.listed("v", None, 9);
        assert_eq!(e.last("v").unwrap().job_type, "mirror");
    }

    #[test]
    fn an_ending_stamped_before_its_start_or_without_a_whole_stamp_has_no_time_of_qemus() {
        let mut e = Endings::default();
        status(&mut e, "j", "created", 10);
        e.event(
            &ev("BLOCK_JOB_CANCELLED", json!({"device": "j", "type": "stream"}), 5),
            0,
        );
        assert_eq!(e.last("j").unwrap().ran_us, None);
        e.event(
            &json!({"event": "BLOCK_JOB_CANCELLED", "data": {"device": "k", "type": "stream"},
            "timestamp": {"seconds": 5, "microseconds": -1}}),
            77,
        );
        let got = e.last("k").unwrap();
        assert_eq!((got.at_us, got.qemu_time), (77, false));
        e.event(
            &json!({"event": "BLOCK_JOB_CANCELLED", "data": {"device": "l", "type": "stream"},
            "timestamp": {"seconds": -1, "microseconds": 5}}),
            78,
        );
        assert_eq!(e.last("l").unwrap().at_us, 78);
    }

    #[test]
    fn after_a_gap_a_commits_good_end_and_its_run_time_are_not_known() {
        let mut e = Endings::default();
        status(&mut e, "c", "created", 1);
        // Its READY may have been among what was missed.
        e.gap();
        e.event(
            &ev("BLOCK_JOB_COMPLETED", json!({"device": "c", "type": "commit"}), 9),
            0,
        );
        let got = e.last("c").unwrap();
        assert_eq!((got.ended, got.ran_us), (Ended::Unknown, None));
        // A job created after the gap is heard whole.
        status(&mut e, "d", "created", 10);
        e.event(
            &ev("BLOCK_JOB_COMPLETED", json!({"device": "d", "type": "commit"}), 12),
            0,
        );
        let got = e.last("d").unwrap();
        assert_eq!((got.ended, got.ran_us), (Ended::Completed, Some(2_000_000)));
    }

    #[test]
    fn a_job_of_another_kind_is_forgotten_and_a_block_jobs_silent_end_is_unknown() {
        let mut e = Endings::default();
        // blockdev-create's job: never listed among block jobs, never a block job event.
        status(&mut e, "create0", "created", 1);
        e.listed("create0", None, 5);
        assert!(e.last("create0").is_none() && e.unsettled("create0", u64::MAX).is_empty());
        // A block job dismissed with no ending event (it never started): unknown, not its id's last ending.
        e.event(
            &ev("BLOCK_JOB_CANCELLED", json!({"device": "j", "type": "stream"}), 1),
            0,
        );
        status(&mut e, "j", "created", 2);
        status(&mut e, "j", "concluded", 2);
        status(&mut e, "j", "null", 3);
        let got = e.last("j").unwrap();
        assert_eq!((got.ended, got.at_us), (Ended::Unknown, 3_000_005));
        // One the list showed once is a block job: gone unseen, unknown.
        status(&mut e, "k", "created", 1);
        e.listed("k", Some(&raw("k", "mirror", "running", None)), 5);
        e.listed("k", None, 6);
        assert_eq!(e.last("k").unwrap().ended, Ended::Unknown);
    }

    #[test]
    fn a_block_job_dismissed_without_an_ending_is_unknown_however_it_was_known() {
        let mut e = Endings::default();
        // Known as a block job by its READY event, by an I/O error event, or unsure after a gap.
        status(&mut e, "r", "created", 1);
        e.event(&ev("BLOCK_JOB_READY", json!({"device": "r", "type": "mirror"}), 2), 0);
        status(&mut e, "r", "null", 3);
        status(&mut e, "i", "created", 1);
        e.event(
            &ev(
                "BLOCK_JOB_ERROR",
                json!({"device": "i", "operation": "write", "action": "stop"}),
                2,
            ),
            0,
        );
        status(&mut e, "g", "created", 1);
        e.gap();
        status(&mut e, "g", "null", 3);
        for id in ["r", "g"] {
            assert_eq!(e.last(id).map(|l| l.ended), Some(Ended::Unknown), "{id}");
        }
        // The error event made it a block job: gone from the list unseen, its ending is unknown (no gap since).
        let mut e = Endings::default();
        status(&mut e, "i", "created", 1);
        e.event(
            &ev(
                "BLOCK_JOB_ERROR",
                json!({"device": "i", "operation": "write", "action": "stop"}),
                2,
            ),
            0,
        );
        e.listed("i", None, 9);
        assert_eq!(e.last("i").map(|l| l.ended), Some(Ended::Unknown));
    }

    #[test]
    fn only_jobs_known_by_the_mark_are_settled_and_the_list_tells_a_missed_ready() {
        let mut e = Endings::default();
        status(&mut e, "old", "created", 1);
        let mark = e.mark();
        status(&mut e, "new", "created", 2);
        assert_eq!(e.unsettled("old", mark), ["old"]);
        assert!(e.unsettled("new", mark).is_empty());
        // A commit whose READY went unheard: the list says ready, and its good end is then unknown.
        let mut ready = raw("old", "commit", "ready", None);
        ready.ready = Some(true);
        e.listed("old", Some(&ready), 5);
        e.event(
            &ev("BLOCK_JOB_COMPLETED", json!({"device": "old", "type": "commit"}), 9),
            0,
        );
        let got = e.last("old").unwrap();
        assert_eq!((got.ended, got.was_ready), (Ended::Unknown, true));
    }

    #[test]
    fn a_job_unheard_across_a_gap_and_an_id_taken_again_end_the_job_before_as_unknown() {
        let mut e = Endings::default();
        e.event(
            &ev(
                "BLOCK_JOB_COMPLETED",
                json!({"device": "s", "type": "stream", "error": "EIO"}),
                1,
            ),
            0,
        );
        // A pull created, then a reconnect: gone from the list, its ending is unknown, not the failure before.
        status(&mut e, "s", "created", 2);
        e.gap();
        e.listed("s", None, 5);
        assert_eq!(e.last("s").map(|l| l.ended), Some(Ended::Unknown));
        // A block job's id created again while it ran: the one before ended unheard.
        status(&mut e, "b", "created", 1);
        e.listed("b", Some(&raw("b", "backup", "running", None)), 2);
        status(&mut e, "b", "created", 3);
        assert_eq!(
            e.last("b").map(|l| (l.ended, l.job_type)),
            Some((Ended::Unknown, "backup".into()))
        );
        assert_eq!(e.unsettled("b", u64::MAX), ["b"]);
        // Not so for an id of another kind of job.
        status(&mut e, "c", "created", 1);
        status(&mut e, "c", "created", 2);
        assert!(e.last("c").is_none());
    }

    #[test]
    fn what_is_kept_is_bounded() {
        let mut e = Endings::default();
        for i in 0..MAX_KEPT + 10 {
            status(&mut e, &format!("r{i}"), "created", 1);
            e.event(
                &ev(
                    "BLOCK_JOB_CANCELLED",
                    json!({"device": format!("e{i}"), "type": "stream"}),
                    1,
                ),
                0,
            );
        }
        assert!(e.running.len() <= MAX_KEPT && e.ended.len() <= MAX_KEPT);
        assert!(e.last("e0").is_none() && e.last(&format!("e{}", MAX_KEPT + 9)).is_some());
        assert!(
            e.unsettled("r0", u64::MAX).is_empty() && !e.unsettled(&format!("r{}", MAX_KEPT + 9), u64::MAX).is_empty()
        );
    }

    #[test]
    fn events_without_a_clock_or_a_job_change_nothing_wrong() {
        let mut e = Endings::default();
        e.event(
            &json!({"event": "BLOCK_JOB_COMPLETED", "data": {"device": "j", "type": "stream"},
            "timestamp": {"seconds": -1, "microseconds": -1}}),
            77,
        );
        let got = e.last("j").unwrap();
        assert_eq!((got.at_us, got.qemu_time), (77, false));
        e.event(
            &json!({"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 0}}),
            0,
        );
        e.event(&json!({"data": {}}), 0);
        assert_eq!(e.ended.len(), 1);
    }
}
