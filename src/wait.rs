//! Waiting for a job to reach its mirroring phase or to leave, woken by QEMU's events rather than by polling.
//!
//! The current state is checked first, so an event that came before the wait is not missed; events that arrive
//! while a query is in flight are kept by the connection and handled next; every event that concerns the job is
//! confirmed with a query.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::jobs;
use crate::qmp::Connection;
use crate::source::{JobReport, QmpSource};
use crate::translate::{self, NoReadyPolicy, Observation, RawJob};

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
    /// The job ended with an error: QEMU's text.
    Failed(String),
    Cancelled,
    /// Waiting for ready, the job ended (or was never there) without becoming ready.
    GoneBeforeReady,
    TimedOut,
}

/// The end of a wait: how, the job's last known state, and the QEMU event that decided it (with QEMU's
/// `timestamp`), if one did.
#[derive(Debug, Clone)]
pub struct Waited {
    pub outcome: Outcome,
    pub last: Option<JobReport>,
    pub event: Option<Value>,
}

/// Without progress reports, the state is still re-read this often, in case an event was missed (a QEMU
/// older than 2.12 sends no JOB_STATUS_CHANGE).
const SAFETY_REQUERY: Duration = Duration::from_secs(5);

fn query(c: &mut Connection) -> Result<Vec<RawJob>> {
    let wire: Vec<jobs::WireJob> = c.execute_as("query-block-jobs")?;
    Ok(wire.into_iter().map(jobs::raw).collect())
}

fn report(raw: &RawJob, flags: u32) -> Result<JobReport> {
    let info = translate::translate(Observation::Listed(raw), None, flags, NoReadyPolicy::Libvirt)?;
    Ok(JobReport { raw: raw.clone(), info })
}

/// Whether the job's listed state already decides the wait.
fn judge(raw: &RawJob, until: Until) -> Option<Outcome> {
    let finished = matches!(raw.status.as_deref(), Some("concluded" | "null"));
    if finished {
        return Some(match (&raw.error, until, raw.ready) {
            (Some(e), _, _) => Outcome::Failed(e.clone()),
            (None, Until::Gone, _) | (None, Until::Ready, Some(true)) => Outcome::Reached,
            (None, Until::Ready, _) => Outcome::GoneBeforeReady,
        });
    }
    (until == Until::Ready && raw.ready == Some(true)).then_some(Outcome::Reached)
}

/// The job id an event is about, if it is about a job.
fn event_job(ev: &Value) -> Option<&str> {
    let data = ev.get("data")?;
    data.get("device").or_else(|| data.get("id")).and_then(Value::as_str)
}

impl QmpSource {
    /// Waits for `device`'s job. `timeout` None waits forever. See [`Outcome`].
    pub fn wait(&self, device: &str, until: Until, timeout: Option<Duration>) -> Result<Waited> {
        self.wait_with_progress(device, until, timeout, None, |_| {})
    }

    /// As [`QmpSource::wait`], also calling `progress` with the job's state at the start, after each event
    /// about it, and every `every` if given (for a progress display; the outcome never depends on it).
    pub fn wait_with_progress(
        &self,
        device: &str,
        until: Until,
        timeout: Option<Duration>,
        every: Option<Duration>,
        mut progress: impl FnMut(&JobReport),
    ) -> Result<Waited> {
        let deadline = timeout.map(|t| Instant::now() + t);
        self.with_connection(|c| wait_on(c, device, until, deadline, every, &mut progress))
    }
}

fn wait_on(
    c: &mut Connection,
    device: &str,
    until: Until,
    deadline: Option<Instant>,
    every: Option<Duration>,
    progress: &mut dyn FnMut(&JobReport),
) -> Result<Waited> {
    let done = |outcome, last, event| Ok(Waited { outcome, last, event });
    // Events from before this wait say nothing about now: the query below does.
    c.take_events();
    let jobs = query(c)?;
    let Some(job) = jobs::select(&jobs, device)? else {
        return match until {
            Until::Gone => done(Outcome::Reached, None, None),
            Until::Ready => {
                log::info!("wait: no block job '{device}'");
                done(Outcome::GoneBeforeReady, None, None)
            }
        };
    };
    let id = job.device.clone();
    let mut last = report(job, 0)?;
    progress(&last);
    if let Some(outcome) = judge(job, until) {
        return done(outcome, Some(last), None);
    }
    loop {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return done(Outcome::TimedOut, Some(last), None);
        }
        let wake = now + every.unwrap_or(SAFETY_REQUERY);
        let wake = deadline.map_or(wake, |d| d.min(wake));
        let event = match c.next_event(wake) {
            Ok(ev) => ev,
            Err(Error::Timeout { .. }) => {
                // Nothing happened: refresh the state (progress display, missed events).
                let jobs = query(c)?;
                match jobs.iter().find(|j| j.device == id) {
                    None => return done(gone_outcome(until), Some(last), None),
                    Some(j) => {
                        last = report(j, 0)?;
                        progress(&last);
                        if let Some(outcome) = judge(j, until) {
                            return done(outcome, Some(last), None);
                        }
                    }
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        if event_job(&event) != Some(id.as_str()) {
            continue;
        }
        let name = event.get("event").and_then(Value::as_str).unwrap_or("").to_string();
        log::debug!("wait: {name} for job '{id}'");
        match name.as_str() {
            "BLOCK_JOB_CANCELLED" => return done(Outcome::Cancelled, Some(last), Some(event)),
            "BLOCK_JOB_COMPLETED" => {
                let outcome = match event["data"].get("error").and_then(Value::as_str) {
                    Some(e) => Outcome::Failed(e.to_string()),
                    None => gone_outcome(until),
                };
                return done(outcome, Some(last), Some(event));
            }
            "BLOCK_JOB_READY" | "BLOCK_JOB_ERROR" | "JOB_STATUS_CHANGE" | "BLOCK_JOB_PENDING" => {
                // Confirm with QEMU's list. The events that follow are read next; nothing is lost.
                let jobs = query(c)?;
                match jobs.iter().find(|j| j.device == id) {
                    Some(j) => {
                        last = report(j, 0)?;
                        progress(&last);
                        if let Some(outcome) = judge(j, until) {
                            return done(outcome, Some(last), Some(event));
                        }
                        if name == "BLOCK_JOB_ERROR" && j.status.as_deref() == Some("paused") {
                            let op = event["data"].get("operation").and_then(Value::as_str).unwrap_or("I/O");
                            let text = format!("{op} error; QEMU paused the job");
                            return done(Outcome::Failed(text), Some(last), Some(event));
                        }
                    }
                    // Gone already: its BLOCK_JOB_COMPLETED or _CANCELLED is next in the queue and tells how.
                    None if name != "BLOCK_JOB_READY" => {}
                    None => {
                        return done(
                            if until == Until::Ready {
                                Outcome::Reached
                            } else {
                                gone_outcome(until)
                            },
                            Some(last),
                            Some(event),
                        )
                    }
                }
            }
            _ => {}
        }
    }
}

fn gone_outcome(until: Until) -> Outcome {
    match until {
        Until::Gone => Outcome::Reached,
        Until::Ready => Outcome::GoneBeforeReady,
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
        assert_eq!(judge(&raw("running", Some(false), None), Until::Ready), None);
        assert_eq!(
            judge(&raw("ready", Some(true), None), Until::Ready),
            Some(Outcome::Reached)
        );
        assert_eq!(judge(&raw("ready", Some(true), None), Until::Gone), None);
        assert_eq!(
            judge(&raw("concluded", Some(false), None), Until::Gone),
            Some(Outcome::Reached)
        );
        assert_eq!(
            judge(&raw("concluded", Some(false), None), Until::Ready),
            Some(Outcome::GoneBeforeReady)
        );
        assert_eq!(
            judge(
                &raw("concluded", Some(false), Some("No space left on device")),
                Until::Gone
            ),
            Some(Outcome::Failed("No space left on device".into()))
        );
    }
}
