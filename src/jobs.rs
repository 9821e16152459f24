//! QEMU's `query-block-jobs` reply: parsing it strictly where libvirt is strict, tolerantly where QEMU grows,
//! and picking the one job a caller means by a device name.

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::qmp::MAX_MESSAGE;
use crate::translate::RawJob;

/// libvirt requires these five fields; `ready`, `status`, `error`, `paused` and `io-status` are optional and
/// anything else is ignored (newer QEMU adds fields and enum values).
#[derive(Deserialize)]
pub(crate) struct WireJob {
    #[serde(rename = "type")]
    job_type: String,
    device: String,
    len: u64,
    offset: u64,
    speed: u64,
    #[serde(default)]
    ready: Option<bool>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    paused: Option<bool>,
    #[serde(default, rename = "io-status")]
    io_status: Option<String>,
    #[serde(default, rename = "actively-synced")]
    actively_synced: Option<bool>,
}

/// Parses the value of a `query-block-jobs` `return`.
pub fn parse_jobs(value: &Value) -> Result<Vec<RawJob>> {
    let list = value
        .as_array()
        .ok_or_else(|| Error::Protocol("query-block-jobs did not return an array".into()))?;
    list.iter()
        .enumerate()
        .map(|(i, entry)| {
            let w = WireJob::deserialize(entry)
                .map_err(|e| Error::Protocol(format!("malformed query-block-jobs entry {i}: {e}")))?;
            Ok(raw(w))
        })
        .collect()
}

/// A whole reply, parsed straight into its typed parts: no JSON tree is built for the common case, which
/// keeps `bji_translate_reply` around a microsecond.
#[derive(Deserialize)]
struct WholeReply {
    #[serde(rename = "return")]
    ret: Option<WireJobs>,
    error: Option<QmpError>,
}

#[derive(Deserialize)]
struct QmpError {
    #[serde(default)]
    class: String,
    #[serde(default)]
    desc: String,
}

pub(crate) fn raw(w: WireJob) -> RawJob {
    RawJob {
        job_type: w.job_type,
        device: w.device,
        len: w.len,
        offset: w.offset,
        speed: w.speed,
        ready: w.ready,
        status: w.status,
        error: w.error,
        paused: w.paused,
        io_status: w.io_status,
        actively_synced: w.actively_synced,
    }
}

/// The most block jobs one reply may list: far beyond any real VM (a job per disk), far below what 10 MiB of
/// reply could hold (about 10^5), each of which would be a series in the exporter.
pub(crate) const MAX_JOBS: usize = 4096;

/// A `query-block-jobs` return of at most `MAX_JOBS` entries, refused while it is parsed (before more are held;
/// over QMP the connection is then dropped, as for any reply that cannot be read).
pub(crate) struct WireJobs(pub(crate) Vec<WireJob>);

impl<'de> Deserialize<'de> for WireJobs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Jobs;
        impl<'de> serde::de::Visitor<'de> for Jobs {
            type Value = WireJobs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a list of block jobs")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<WireJobs, A::Error> {
                let mut jobs = Vec::new();
                while let Some(j) = seq.next_element::<WireJob>()? {
                    if jobs.len() == MAX_JOBS {
                        return Err(serde::de::Error::custom(format!(
                            "more than {MAX_JOBS} block jobs in one reply, the limit"
                        )));
                    }
                    jobs.push(j);
                }
                Ok(WireJobs(jobs))
            }
        }
        d.deserialize_seq(Jobs)
    }
}

/// Parses the text of a reply, whole (`{"return": [...]}`) or just the array.
pub fn parse_reply_text(text: &str) -> Result<Vec<RawJob>> {
    if text.len() > MAX_MESSAGE {
        return Err(Error::TooLarge(MAX_MESSAGE));
    }
    let malformed = |e: serde_json::Error| {
        if e.is_syntax() || e.is_eof() {
            Error::InvalidArg(format!("reply is not valid JSON: {e}"))
        } else {
            Error::Protocol(format!("malformed query-block-jobs reply: {e}"))
        }
    };
    match text.trim_start().as_bytes().first() {
        Some(b'[') => Ok(serde_json::from_str::<WireJobs>(text)
            .map_err(malformed)?
            .0
            .into_iter()
            .map(raw)
            .collect()),
        Some(b'{') => match serde_json::from_str::<WholeReply>(text).map_err(malformed)? {
            WholeReply { ret: Some(jobs), .. } => Ok(jobs.0.into_iter().map(raw).collect()),
            WholeReply { error: Some(e), .. } => Err(Error::Qmp {
                class: e.class,
                desc: e.desc,
            }),
            _ => Err(Error::InvalidArg("reply has neither 'return' nor 'error'".into())),
        },
        _ => Err(Error::InvalidArg(
            "reply must be a query-block-jobs reply object or its array (reply is not valid JSON)".into(),
        )),
    }
}

/// libvirt's job ids for a disk: `<kind>-<target>-<node>` with blockdev (`copy-vda-libvirt-1-format`) and
/// `drive-<alias>` before it.
pub(crate) fn is_libvirt_job_of(job_id: &str, disk: &str) -> bool {
    if let Some(alias) = job_id.strip_prefix("drive-") {
        if alias == disk {
            return true;
        }
    }
    ["copy-", "commit-", "pull-", "backup-", "create-"].iter().any(|kind| {
        job_id
            .strip_prefix(kind)
            .and_then(|rest| rest.strip_prefix(disk))
            .is_some_and(|rest| rest.starts_with('-'))
    })
}

/// The job `device` means: its QMP job id, or failing that a libvirt disk target or alias. Two candidates at
/// the same level is an error, not a guess.
pub fn select<'a>(jobs: &'a [RawJob], device: &str) -> Result<Option<&'a RawJob>> {
    let exact = jobs.iter().filter(|j| j.device == device);
    let by_name = jobs.iter().filter(|j| is_libvirt_job_of(&j.device, device));
    for mut candidates in [exact.collect::<Vec<_>>(), by_name.collect()] {
        match candidates.len() {
            0 => continue,
            1 => return Ok(candidates.pop()),
            _ => {
                return Err(Error::Ambiguous {
                    device: device.to_string(),
                    first: candidates[0].device.clone(),
                    second: candidates[1].device.clone(),
                })
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn what_a_reply_may_be_and_how_it_fails() {
        // A reply of exactly the limit is read; the limit is the size of the text.
        let mut text = String::from("[");
        text.push_str(&" ".repeat(MAX_MESSAGE - 2));
        text.push(']');
        assert_eq!(text.len(), MAX_MESSAGE);
        assert!(parse_reply_text(&text).unwrap().is_empty());
        text.push(' ');
        assert!(matches!(parse_reply_text(&text), Err(Error::TooLarge(MAX_MESSAGE))));
        // Not JSON, or cut short: the caller's text is wrong.
        for bad in ["[x]", "[{", "{\"return\": ["] {
            assert!(matches!(parse_reply_text(bad), Err(Error::InvalidArg(_))), "{bad}");
        }
        // JSON of the wrong shape: QEMU's reply is.
        match parse_reply_text(r#"{"return": 5}"#) {
            Err(Error::Protocol(m)) => assert!(m.contains("expected a list of block jobs"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_reply_of_more_jobs_than_the_limit_is_refused() {
        let reply = |n: usize| {
            let jobs: Vec<_> = (0..n)
                .map(|i| json!({"type": "mirror", "device": format!("j{i}"), "len": 10, "offset": 5, "speed": 0}))
                .collect();
            json!({ "return": jobs }).to_string()
        };
        assert_eq!(parse_reply_text(&reply(MAX_JOBS)).unwrap().len(), MAX_JOBS);
        let e = parse_reply_text(&reply(MAX_JOBS + 1)).unwrap_err();
        assert!(e.to_string().contains("more than 4096 block jobs"), "{e}");
    }

    fn entry(device: &str) -> Value {
        json!({"type": "mirror", "device": device, "len": 10, "offset": 5, "speed": 0, "ready": false,
               "busy": true, "paused": false, "io-status": "ok", "status": "running", "auto-finalize": true,
               "auto-dismiss": true, "actively-synced": false, "future-field": {"x": 1}})
    }

    fn ids(jobs: &[RawJob], device: &str) -> Result<Option<String>> {
        select(jobs, device).map(|j| j.map(|j| j.device.clone()))
    }

    #[test]
    fn parses_tolerantly() {
        let mut e = entry("j");
        e["status"] = json!("a-status-from-qemu-42");
        let jobs = parse_jobs(&json!([e])).unwrap();
        assert_eq!(jobs[0].status.as_deref(), Some("a-status-from-qemu-42"));
        assert_eq!((jobs[0].offset, jobs[0].len, jobs[0].ready), (5, 10, Some(false)));
        let mut old = entry("j");
        old.as_object_mut().unwrap().remove("ready");
        assert_eq!(parse_jobs(&json!([old])).unwrap()[0].ready, None);
    }

    #[test]
    fn rejects_what_libvirt_rejects() {
        for field in ["type", "device", "len", "offset", "speed"] {
            let mut e = entry("j");
            e.as_object_mut().unwrap().remove(field);
            let err = parse_jobs(&json!([e])).unwrap_err().to_string();
            assert!(err.contains(&format!("missing field `{field}`")), "{err}");
        }
        for (field, bad) in [
            ("len", json!(-1)),
            ("offset", json!("5")),
            ("speed", json!(1.5)),
            ("ready", json!(1)),
        ] {
            let mut e = entry("j");
            e[field] = bad;
            assert!(parse_jobs(&json!([e])).is_err(), "{field}");
        }
        assert!(parse_jobs(&json!({"a": 1})).is_err());
        let mut big = entry("j");
        big["len"] = json!(18446744073709551616u128.to_string().parse::<f64>().unwrap());
        assert!(parse_jobs(&json!([big])).is_err());
    }

    #[test]
    fn reply_text_forms() {
        let whole = json!({"return": [entry("a")], "id": "x"}).to_string();
        let bare = json!([entry("a")]).to_string();
        assert_eq!(parse_reply_text(&whole).unwrap(), parse_reply_text(&bare).unwrap());
        let err = parse_reply_text(r#"{"error": {"class": "GenericError", "desc": "boom"}}"#).unwrap_err();
        assert_eq!(err.to_string(), "QEMU error GenericError: boom");
        for bad in ["", "nope", "42", r#"{"id": 1}"#, "[1]"] {
            assert!(parse_reply_text(bad).is_err(), "{bad}");
        }
        let huge = " ".repeat(MAX_MESSAGE + 1);
        assert!(matches!(parse_reply_text(&huge), Err(Error::TooLarge(_))));
    }

    #[test]
    fn selection() {
        let jobs = parse_jobs(&json!([
            entry("copy-vda-libvirt-1-format"),
            entry("drive-virtio-disk1"),
            entry("mirror0"),
            entry("commit-vdb-libvirt-3-format"),
            entry("pull-vdb-libvirt-4-format"),
        ]))
        .unwrap();
        assert_eq!(ids(&jobs, "mirror0").unwrap().as_deref(), Some("mirror0"));
        assert_eq!(ids(&jobs, "vda").unwrap().as_deref(), Some("copy-vda-libvirt-1-format"));
        assert_eq!(
            ids(&jobs, "copy-vda-libvirt-1-format").unwrap().as_deref(),
            Some("copy-vda-libvirt-1-format")
        );
        assert_eq!(
            ids(&jobs, "virtio-disk1").unwrap().as_deref(),
            Some("drive-virtio-disk1")
        );
        assert_eq!(ids(&jobs, "vd").unwrap(), None);
        assert_eq!(ids(&jobs, "vdc").unwrap(), None);
        assert_eq!(ids(&jobs, "libvirt").unwrap(), None);
        let err = ids(&jobs, "vdb").unwrap_err().to_string();
        assert!(err.contains("more than one block job"), "{err}");
        let dup = parse_jobs(&json!([entry("j"), entry("j")])).unwrap();
        assert!(select(&dup, "j").is_err());
        // An exact id beats a libvirt-name match.
        let both = parse_jobs(&json!([entry("vda"), entry("copy-vda-libvirt-1-format")])).unwrap();
        assert_eq!(ids(&both, "vda").unwrap().as_deref(), Some("vda"));
    }
}
