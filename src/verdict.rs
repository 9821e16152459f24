//! How a wait's verdict is decided from what QEMU said, in the order it said it: the events about the wait's
//! job and the states queried between them. Pure: `wait` does the I/O (listening, querying, reading devices)
//! and feeds this machine what it heard; the property test (tests/properties.rs) drives it directly.
//!
//! The endings are told as libvirt tells them (`virConnectDomainEventBlockJobStatus`): a cancel is CANCELLED
//! even where QEMU lists the concluded job with its "Operation canceled" error, a job QEMU paused on an I/O
//! error has FAILED, and a ready job that ends without a pivot (a cancel after ready) is CANCELLED: that last
//! one is told by the job's devices (`Next::Settle`), which only I/O can read.

use serde_json::Value;

use crate::qmp::QemuVersion;
use crate::translate::RawJob;

/// What to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// QEMU says the job is ready (a mirror or active commit in its mirroring phase).
    Ready,
    /// The job has left QEMU's list (or concluded, for jobs that wait to be dismissed).
    Gone,
}

/// How a wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Reached,
    /// The job ended with an error, or QEMU paused it on one: QEMU's text.
    Failed(String),
    Cancelled,
    /// Waiting for ready, the job ended (or was never there) without becoming ready.
    GoneBeforeReady,
    TimedOut,
}

/// QEMU's text for a cancelled job's error (`job_update_rc`: strerror(ECANCELED), in QEMU's C locale), compared
/// as text: this process's own strerror would follow the caller's locale.
pub const CANCELED: &str = "Operation canceled";

/// Whether QEMU is done with the job: `concluded` (waiting to be dismissed) or `null`.
pub fn finished(raw: &RawJob) -> bool {
    matches!(raw.status.as_deref(), Some("concluded" | "null"))
}

/// Whether the job is in its mirroring phase: QEMU's `ready`, or its status `ready` or `standby` (paused while
/// ready), as libvirt counts them.
pub fn is_ready(raw: &RawJob) -> bool {
    // `make test-breaks` (`standby`): a ready job paused taken for one that is not ready.
    if crate::environment::broken("standby") && matches!(raw.status.as_deref(), Some("standby")) {
        return false;
    }
    raw.ready == Some(true) || matches!(raw.status.as_deref(), Some("ready" | "standby"))
}

/// A job QEMU paused on an I/O error (`on-*-error=stop|enospc`): what failed, in QEMU's words.
fn stopped_on_error(raw: &RawJob) -> Option<String> {
    let io = raw.io_status.as_deref().filter(|s| *s != "ok")?;
    (raw.paused == Some(true) || raw.status.as_deref() == Some("paused")).then(|| match io {
        "nospace" => "No space left on device; QEMU paused the job".to_string(),
        other => format!("I/O error ({other}); QEMU paused the job"),
    })
}

/// Whether a job of `job_type` that ended without an error must have been ready: a mirror, from QEMU 2.12.1 on
/// (`block-job-complete` needs ready, and a cancel before ready ends with "Operation canceled"; 2.12.0 lists no
/// `error`, so a cancel or failure there looks like a good end). QEMU lists a concluded job with `ready: false`
/// (`job_is_ready` is false past ready), so the listing alone cannot tell a pivot on ready from a job that
/// never was. An active commit is `commit`, as a plain one is: only the wait's own sight of it tells.
pub fn mirror_ended_ready(job_type: &str, v: QemuVersion) -> bool {
    job_type == "mirror" && (v.major, v.minor, v.micro) >= (2, 12, 1)
}

/// Whether the job's listed state already decides the wait (`was_ready`: the job is known to have been ready,
/// by the wait's own sight or `mirror_ended_ready`).
pub fn judge(raw: &RawJob, until: Until, was_ready: bool) -> Option<Outcome> {
    if finished(raw) {
        return Some(match (&raw.error, until) {
            (Some(e), _) if e == CANCELED => Outcome::Cancelled,
            (Some(e), _) => Outcome::Failed(e.clone()),
            (None, Until::Gone) => Outcome::Reached,
            (None, Until::Ready) if was_ready || is_ready(raw) => Outcome::Reached,
            (None, Until::Ready) => Outcome::GoneBeforeReady,
        });
    }
    if until == Until::Ready && is_ready(raw) {
        return Some(Outcome::Reached);
    }
    stopped_on_error(raw).map(Outcome::Failed)
}

/// The verdict of a wait whose job the first query did not list.
pub fn not_listed(until: Until) -> Outcome {
    match until {
        Until::Gone => Outcome::Reached,
        Until::Ready => Outcome::GoneBeforeReady,
    }
}

/// What the wait does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The verdict.
    Done(Outcome),
    /// Decided, a ready job that ended well, unless its devices show it was not pivoted: completed, or
    /// cancelled after ready (read them, `wait::settle`).
    Settle,
    /// QEMU's event said ready (the verdict for a wait for ready); the list is read once more for the report.
    ReadyByEvent,
    /// Read QEMU's list and tell [`Verdict::listed`] what it shows of the job.
    Query,
    /// Listen for the next event.
    Listen,
    /// The job ended while the connection was lost: its events went with it, and the list cannot tell how.
    Unknown,
}

/// One wait's verdict, as what QEMU said comes in.
#[derive(Debug, Clone)]
pub struct Verdict {
    until: Until,
    version: QemuVersion,
    job_type: String,
    /// A wait for gone on a copy or active commit: a good end may be a pivot or a cancel after ready.
    pivots: bool,
    was_ready: bool,
    /// The job's node sits under a mirror filter: a copy or an active commit (which QEMU lists as `commit`, as
    /// a plain one), known from its devices.
    mirrored: bool,
    /// The event that asked for the query now answered ("" for none: a safety re-read, or events missed).
    asked_by: String,
    said_ready: bool,
    /// Events about the job may have been lost (the log overflowed, or the connection was made again).
    lost: bool,
}

impl Verdict {
    /// A wait for `until` on a QEMU of `version`, given the job as the first query listed it, and whether its
    /// devices showed it under a mirror filter (`mirrored`: a copy or an active commit).
    pub fn start(until: Until, version: QemuVersion, listed: &RawJob, mirrored: bool) -> (Verdict, Next) {
        let v = Verdict {
            until,
            version,
            pivots: until == Until::Gone && matches!(listed.job_type.as_str(), "mirror" | "commit"),
            job_type: listed.job_type.clone(),
            was_ready: is_ready(listed),
            mirrored,
            asked_by: String::new(),
            said_ready: false,
            lost: false,
        };
        let next = match judge(listed, until, v.ended_ready(&listed.job_type)) {
            Some(o) => Next::Done(o),
            None => Next::Listen,
        };
        (v, next)
    }

    /// Whether a job of `job_type` that ended without an error had been ready: seen so, or a job that QEMU lets
    /// end well only once ready (`mirror_ended_ready`; an active commit known by its filter).
    fn ended_ready(&self, job_type: &str) -> bool {
        self.was_ready
            || mirror_ended_ready(job_type, self.version)
            || (self.mirrored && mirror_ended_ready("mirror", self.version))
    }

    /// Whether the job is known to have been ready (heard or seen).
    pub fn was_ready(&self) -> bool {
        self.was_ready
    }

    /// Whether a good end of this wait's job may be a pivot or a cancel after ready (a wait for gone on a copy
    /// or active commit).
    pub fn pivots(&self) -> bool {
        self.pivots
    }

    /// A good end, settled by the devices only where the job was ready and could have been pivoted.
    fn good_end(&self, knew_ready: bool) -> Next {
        match self.until {
            Until::Ready if knew_ready => Next::Done(Outcome::Reached),
            Until::Ready => Next::Done(Outcome::GoneBeforeReady),
            Until::Gone if self.pivots && knew_ready => Next::Settle,
            Until::Gone => Next::Done(Outcome::Reached),
        }
    }

    /// An event about this wait's job.
    pub fn event(&mut self, ev: &Value) -> Next {
        let name = ev.get("event").and_then(Value::as_str).unwrap_or("");
        let data = ev.get("data").unwrap_or(&Value::Null);
        match name {
            "BLOCK_JOB_CANCELLED" => Next::Done(Outcome::Cancelled),
            "BLOCK_JOB_COMPLETED" => match data.get("error").and_then(Value::as_str) {
                Some(e) if e == CANCELED => Next::Done(Outcome::Cancelled),
                Some(e) => Next::Done(Outcome::Failed(e.to_string())),
                None => {
                    let job_type = data.get("type").and_then(Value::as_str).unwrap_or(&self.job_type);
                    self.good_end(self.ended_ready(job_type))
                }
            },
            // QEMU before 2.2 says ready only with this event.
            "BLOCK_JOB_READY" if self.until == Until::Ready => {
                self.was_ready = true;
                Next::ReadyByEvent
            }
            "BLOCK_JOB_READY" | "BLOCK_JOB_ERROR" | "JOB_STATUS_CHANGE" | "BLOCK_JOB_PENDING" => {
                // An event that says ready counts, even if the job is gone or concluded by the query (an abort
                // or a failure the moment it turned ready): it was ready first, as libvirt's READY says.
                self.said_ready = name == "BLOCK_JOB_READY"
                    || matches!(data.get("status").and_then(Value::as_str), Some("ready" | "standby"));
                self.was_ready |= self.said_ready;
                if self.said_ready && self.until == Until::Ready {
                    return Next::ReadyByEvent;
                }
                self.asked_by = name.to_string();
                Next::Query
            }
            _ => Next::Listen,
        }
    }

    /// Nothing heard for a while: the list says how things stand.
    pub fn quiet(&mut self) -> Next {
        self.asked_by.clear();
        self.said_ready = false;
        Next::Query
    }

    /// Events were lost (the log overflowed, or the connection was lost): the list says how things stand, and a
    /// job gone from it meanwhile is not guessed at.
    pub fn missed(&mut self) -> Next {
        self.lost = true;
        self.quiet()
    }

    /// What the query asked for showed of the job (None: not listed). `gap`: the connection was lost and made
    /// again since the wait last heard QEMU, so events may have gone with it.
    pub fn listed(&mut self, job: Option<&RawJob>, gap: bool) -> Next {
        self.lost |= gap;
        let asked_by = std::mem::take(&mut self.asked_by);
        let said_ready = std::mem::take(&mut self.said_ready);
        match job {
            Some(j) => {
                self.was_ready |= is_ready(j) || said_ready;
                let knew_ready = self.ended_ready(&j.job_type);
                match judge(j, self.until, knew_ready) {
                    Some(Outcome::Reached) if finished(j) => self.good_end(knew_ready),
                    Some(o) => Next::Done(o),
                    None => Next::Listen,
                }
            }
            // Gone, and an event tells how: BLOCK_JOB_COMPLETED or _CANCELLED is heard next.
            None if !asked_by.is_empty() => Next::Listen,
            // Gone while events were lost: guessing would be wrong as often as right (an ending event still in
            // the log, heard next, may yet tell).
            None if self.lost => Next::Unknown,
            // Gone without an event heard (a QEMU that sends none).
            None => self.good_end(self.was_ready),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(status: &str, ready: Option<bool>, error: Option<&str>) -> RawJob {
        RawJob {
            job_type: "mirror".into(),
            device: "j".into(),
            len: 10,
            offset: 10,
            speed: 0,
            ready,
            status: Some(status.into()),
            error: error.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn judging_a_listed_job() {
        assert_eq!(judge(&raw("running", Some(false), None), Until::Ready, false), None);
        // Concluded once ready, as QEMU before 6.1 lists it (its `ready` flag stayed set; 6.1 on say `ready:
        // false` for a concluded job, judged below): ready was reached.
        assert_eq!(
            judge(&raw("concluded", Some(true), None), Until::Ready, false),
            Some(Outcome::Reached)
        );
        assert_eq!(
            judge(&raw("ready", Some(true), None), Until::Ready, false),
            Some(Outcome::Reached)
        );
        assert_eq!(judge(&raw("ready", Some(true), None), Until::Gone, false), None);
        assert_eq!(
            judge(&raw("concluded", Some(false), None), Until::Gone, false),
            Some(Outcome::Reached)
        );
        // QEMU 7.2 lists a concluded job `ready: false`, pivoted on ready or not: what the wait knows decides.
        assert_eq!(
            judge(&raw("concluded", Some(false), None), Until::Ready, false),
            Some(Outcome::GoneBeforeReady)
        );
        assert_eq!(
            judge(&raw("concluded", Some(false), None), Until::Ready, true),
            Some(Outcome::Reached)
        );
        let v = |major, minor, micro| QemuVersion { major, minor, micro };
        assert!(mirror_ended_ready("mirror", v(2, 12, 1)) && mirror_ended_ready("mirror", v(7, 2, 0)));
        assert!(!mirror_ended_ready("mirror", v(2, 12, 0)) && !mirror_ended_ready("commit", v(11, 1, 0)));
        assert!(!mirror_ended_ready("stream", v(7, 2, 0)));
        assert_eq!(
            judge(
                &raw("concluded", Some(false), Some("No space left on device")),
                Until::Gone,
                false
            ),
            Some(Outcome::Failed("No space left on device".into()))
        );
        // A cancel before ready, with auto-dismiss off: concluded, with QEMU's ECANCELED text.
        assert_eq!(
            judge(&raw("concluded", Some(false), Some(CANCELED)), Until::Gone, false),
            Some(Outcome::Cancelled)
        );
        // Paused while ready is still ready, as QEMU and libvirt count it.
        assert_eq!(
            judge(&raw("standby", Some(true), None), Until::Ready, false),
            Some(Outcome::Reached)
        );
        assert_eq!(
            judge(&raw("standby", None, None), Until::Ready, false),
            Some(Outcome::Reached)
        );
        // Paused by QEMU on an I/O error: failed, whichever event announced it.
        let mut stopped = raw("paused", Some(false), None);
        stopped.paused = Some(true);
        stopped.io_status = Some("failed".into());
        assert!(matches!(judge(&stopped, Until::Ready, false), Some(Outcome::Failed(_))));
        assert!(matches!(judge(&stopped, Until::Gone, false), Some(Outcome::Failed(_))));
        stopped.io_status = Some("nospace".into());
        assert_eq!(
            judge(&stopped, Until::Gone, false),
            Some(Outcome::Failed("No space left on device; QEMU paused the job".into()))
        );
        // Paused on request is not a failure.
        stopped.io_status = Some("ok".into());
        assert_eq!(judge(&stopped, Until::Gone, false), None);
    }
}
