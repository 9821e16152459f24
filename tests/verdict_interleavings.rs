//! The wait's verdict machine (`verdict::Verdict`) against a model of libvirt's `qemuBlockJobEventProcess`, on
//! random interleavings of two and three jobs' lifecycles in QEMU's own event order (auto-dismiss off, as
//! libvirt starts every job; QEMU 7.2's listing: `ready` only while ready, the error once the job aborts). Each
//! wait starts at a random point, hears every event from there on (its own job's; others' are skipped, as the
//! wait skips them), and each query it asks for sees QEMU's state at a random later point, never earlier than
//! the event that asked, as QEMU's state runs ahead of the events a client has read.

use blockjobinfo::verdict::{self, Next, Outcome, Until, Verdict};
use blockjobinfo::{QemuVersion, RawJob};
use proptest::prelude::*;
use serde_json::{json, Value};

const IO_ERROR: &str = "Input/output error";

/// How a job goes, as QEMU runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Ready, then stays so (nobody ends it while the wait runs).
    ReadyStays,
    /// Ready, then completed: a pivot (libvirt: READY, COMPLETED).
    ReadyPivot,
    /// Ready, then cancelled without a pivot (libvirt: READY, CANCELED; QEMU: BLOCK_JOB_COMPLETED, no error).
    ReadyAbort,
    /// Ready, then an I/O error ends it (libvirt: READY, FAILED).
    ReadyFail,
    /// Cancelled before ready (libvirt: CANCELED).
    Cancel,
    /// An I/O error before ready (libvirt: FAILED).
    Fail,
    /// A job that has no mirroring phase ends well (libvirt: COMPLETED).
    Complete,
    /// Runs on.
    Runs,
}

#[derive(Debug, Clone)]
struct Job {
    id: String,
    job_type: &'static str,
    path: Path,
}

/// The job's statuses after `running`, each a JOB_STATUS_CHANGE, with the other events where QEMU sends them.
fn events(job: &Job) -> Vec<Value> {
    let id = job.id.as_str();
    let jsc = |status: &str| json!({"event": "JOB_STATUS_CHANGE", "data": {"id": id, "status": status}});
    let bj = |name: &str, error: Option<&str>| {
        let mut data = json!({"device": id, "type": job.job_type, "len": 100, "offset": 100, "speed": 0});
        if let Some(e) = error {
            data["error"] = e.into();
        }
        json!({"event": name, "data": data})
    };
    let ready = || vec![jsc("ready"), bj("BLOCK_JOB_READY", None)];
    let good_end = || {
        vec![
            jsc("waiting"),
            jsc("pending"),
            bj("BLOCK_JOB_COMPLETED", None),
            jsc("concluded"),
        ]
    };
    let failure = || {
        vec![
            jsc("aborting"),
            bj("BLOCK_JOB_COMPLETED", Some(IO_ERROR)),
            jsc("concluded"),
        ]
    };
    let cancel = || vec![jsc("aborting"), bj("BLOCK_JOB_CANCELLED", None), jsc("concluded")];
    match job.path {
        Path::ReadyStays => ready(),
        Path::ReadyPivot | Path::ReadyAbort => [ready(), good_end()].concat(),
        Path::ReadyFail => [ready(), failure()].concat(),
        Path::Cancel => cancel(),
        Path::Fail => failure(),
        Path::Complete => good_end(),
        Path::Runs => vec![],
    }
}

/// QEMU 7.2's listing of `job` once it has sent `sent` of its events. With auto-finalize on, `waiting`,
/// `pending` and `aborting` pass within one turn of QEMU's main loop, between two commands: a query sees the
/// status before them (the filter still in place), or `concluded`. The error shows once the job's coroutine
/// has set it, before those statuses (`job_co_entry`): here, from the first of them.
fn listing(job: &Job, sent: &[Value]) -> RawJob {
    let statuses: Vec<&str> = sent
        .iter()
        .filter_map(|e| e.pointer("/data/status").and_then(Value::as_str))
        .collect();
    let ending = statuses
        .iter()
        .any(|s| matches!(*s, "waiting" | "pending" | "aborting" | "concluded"));
    let status = statuses
        .iter()
        .rev()
        .find(|s| !matches!(**s, "waiting" | "pending" | "aborting"))
        .copied()
        .unwrap_or("running")
        .to_string();
    let error = match (job.path, ending) {
        (_, false) => None,
        (Path::Cancel, _) => Some(verdict::CANCELED.to_string()),
        (Path::Fail | Path::ReadyFail, _) => Some(IO_ERROR.to_string()),
        _ => None,
    };
    RawJob {
        job_type: job.job_type.to_string(),
        device: job.id.clone(),
        len: 100,
        offset: 100,
        speed: 0,
        ready: Some(status == "ready"),
        status: Some(status),
        error,
        paused: Some(false),
        io_status: Some("ok".into()),
        actively_synced: None,
    }
}

/// libvirt's word for the job as a listener that began at the wait's start hears it (`ready_heard`: its
/// JOB_STATUS_CHANGE to ready or its BLOCK_JOB_READY comes at or after that point, or for a wait for gone, its
/// devices showed its mirror filter), given the state the wait first read (`first`):
/// what `qemuBlockJobEventProcess` turns QEMU's events into (READY; COMPLETED, FAILED, CANCELED, a ready copy's
/// abort being CANCELED), and for a wait for ready the first of READY or an ending. Where the first read shows
/// the job already concluded, or ending after a ready the wait did not hear, the wait has QEMU's listing alone:
/// the model then says what that listing shows (the limits docs/c-api.md lists).
fn libvirts_word(job: &Job, first: &RawJob, until: Until, v: QemuVersion, ready_heard: bool) -> Outcome {
    let status = first.status.as_deref().unwrap_or("running");
    let ending = match job.path {
        Path::ReadyStays | Path::Runs => Outcome::TimedOut,
        Path::ReadyPivot | Path::Complete => Outcome::Reached,
        Path::ReadyAbort | Path::Cancel => Outcome::Cancelled,
        Path::ReadyFail | Path::Fail => Outcome::Failed(IO_ERROR.into()),
    };
    // What QEMU's listing of a concluded job says.
    let by_listing = |error: Option<&str>| match error {
        Some(e) if e == verdict::CANCELED => Outcome::Cancelled,
        Some(e) => Outcome::Failed(e.to_string()),
        None if until == Until::Gone => Outcome::Reached,
        None if verdict::mirror_ended_ready(job.job_type, v) => Outcome::Reached,
        None => Outcome::GoneBeforeReady,
    };
    match until {
        // A ready copy cancelled before the wait began: the listing shows a good end.
        _ if status == "concluded" => by_listing(first.error.as_deref()),
        Until::Gone => ending,
        Until::Ready if status == "ready" || ready_heard => Outcome::Reached,
        Until::Ready => match ending {
            Outcome::Reached => Outcome::GoneBeforeReady,
            other => other,
        },
    }
}

fn job_strategy(n: usize) -> impl Strategy<Value = Job> {
    let path = prop_oneof![
        Just(Path::ReadyStays),
        Just(Path::ReadyPivot),
        Just(Path::ReadyAbort),
        Just(Path::ReadyFail),
        Just(Path::Cancel),
        Just(Path::Fail),
        Just(Path::Complete),
        Just(Path::Runs),
    ];
    (prop_oneof![Just("mirror"), Just("commit"), Just("stream")], path).prop_map(move |(t, path)| {
        // A stream has no mirroring phase; a commit here is an active one (a plain commit is a stream's kind).
        let path = match (t, path) {
            ("stream", Path::ReadyStays) => Path::Runs,
            ("stream", Path::ReadyPivot | Path::ReadyAbort) => Path::Complete,
            ("stream", Path::ReadyFail) => Path::Fail,
            (_, Path::Complete) => Path::ReadyPivot,
            (_, p) => p,
        };
        Job {
            id: format!("job{n}"),
            job_type: t,
            path,
        }
    })
}

/// Two or three jobs, the order their events interleave in (a job index per event), where each wait starts,
/// what it waits for, and where each of its queries reads QEMU's state.
type Scenario = (Vec<Job>, Vec<usize>, Vec<(usize, bool)>, Vec<u16>, Vec<bool>);

fn scenario() -> impl Strategy<Value = Scenario> {
    (2usize..=3)
        .prop_flat_map(|n| (0..n).map(job_strategy).collect::<Vec<_>>())
        .prop_flat_map(|jobs| {
            let total: usize = jobs.iter().map(|j| events(j).len()).sum();
            let order = Just(
                (0..jobs.len())
                    .flat_map(|i| vec![i; events(&jobs[i]).len()])
                    .collect::<Vec<_>>(),
            )
            .prop_shuffle();
            let waits = prop::collection::vec((0..=total, any::<bool>()), jobs.len());
            (
                Just(jobs),
                order,
                waits,
                prop::collection::vec(any::<u16>(), 64),
                prop::collection::vec(any::<bool>(), 64),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    /// Every wait's verdict is libvirt's word for its own job, whatever the other jobs do meanwhile.
    #[test]
    fn each_wait_gets_libvirts_word_for_its_own_job(
        (jobs, order, waits, picks, quiet) in scenario()
    ) {
        let v = QemuVersion { major: 7, minor: 2, micro: 0 };
        // The global event stream, each job's own in QEMU's order.
        let mut next_of = vec![0usize; jobs.len()];
        let per_job: Vec<Vec<Value>> = jobs.iter().map(events).collect();
        let stream: Vec<(usize, Value)> = order
            .iter()
            .map(|&j| {
                let e = per_job[j][next_of[j]].clone();
                next_of[j] += 1;
                (j, e)
            })
            .collect();
        // QEMU's listing of job `j` once the first `at` events of the stream were sent.
        let state_at = |j: usize, at: usize| {
            let sent: Vec<Value> = stream[..at].iter().filter(|(k, _)| *k == j).map(|(_, e)| e.clone()).collect();
            listing(&jobs[j], &sent)
        };
        let mut pick = picks.iter().cycle();
        let mut quiets = quiet.iter().cycle();
        for (j, (start, ready)) in waits.iter().enumerate() {
            let until = if *ready { Until::Ready } else { Until::Gone };
            let job = &jobs[j];
            // The first query, at or after the point where the wait began listening.
            let mut at = *start + (*pick.next().unwrap() as usize) % (stream.len() - start + 1);
            let first = state_at(j, at);
            // A wait for gone reads the job's devices: under a mirror filter while it runs, a copy or an active
            // commit (every commit here is one).
            // The devices are read as the wait begins, before its first query: the filter is there until the job
            // has concluded.
            let filtered = state_at(j, *start).status.as_deref() != Some("concluded");
            let mirrored = until == Until::Gone && job.job_type != "stream" && filtered;
            let ready_heard = stream[*start..]
                .iter()
                .any(|(k, e)| {
                    *k == j
                        && (e["event"] == "BLOCK_JOB_READY" || e.pointer("/data/status").and_then(Value::as_str) == Some("ready"))
                });
            let expected = libvirts_word(job, &first, until, v, ready_heard || mirrored);
            let (mut machine, mut next) = Verdict::start(until, v, &first, mirrored);
            let mut heard = *start;
            let got = loop {
                match next {
                    Next::Done(o) => break o,
                    Next::ReadyByEvent => break Outcome::Reached,
                    // The devices tell a pivot from a cancel after ready.
                    Next::Settle => break match job.path {
                        Path::ReadyAbort => Outcome::Cancelled,
                        _ => Outcome::Reached,
                    },
                    Next::Unknown => panic!("no connection was lost, yet the verdict is unknown"),
                    Next::Query => {
                        // QEMU's state at a later point than any read before and than the event that asked.
                        let lo = at.max(heard);
                        at = lo + (*pick.next().unwrap() as usize) % (stream.len() - lo + 1);
                        let listed = state_at(j, at);
                        next = machine.listed(Some(&listed), false);
                    }
                    Next::Listen => {
                        // With nothing heard yet that the state has run ahead of, a safety re-read may come.
                        if at <= heard && *quiets.next().unwrap() && heard < stream.len() {
                            prop_assert_eq!(machine.quiet(), Next::Query);
                            at = heard;
                            next = machine.listed(Some(&state_at(j, at)), false);
                            continue;
                        }
                        let Some((k, ev)) = stream.get(heard) else {
                            break Outcome::TimedOut;
                        };
                        heard += 1;
                        if *k == j {
                            next = machine.event(ev);
                        }
                    }
                }
            };
            prop_assert_eq!(
                &got, &expected,
                "wait {} for {:?} on {:?}, from event {} (first read: {:?})", j, until, job, start, first.status
            );
        }
    }
}
