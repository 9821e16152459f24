//! Invariants of the rules on random inputs: whatever QEMU says, the answer never claims more than it knows.
// `c_ulong` is u64 here and u32 on 32-bit targets: the conversions are not useless everywhere.
#![allow(clippy::useless_conversion)]

use blockjobinfo::*;
use proptest::prelude::*;
use std::time::Duration;

fn raw_job() -> impl Strategy<Value = RawJob> {
    let num = prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        any::<u64>(),
        0u64..1000
    ];
    (
        "(mirror|commit|stream|backup|create|[a-z-]{1,12})",
        num.clone(),
        num.clone(),
        num,
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(t, len, offset, speed, ready)| RawJob {
            job_type: t,
            device: "j".into(),
            len,
            offset,
            speed,
            ready,
            ..Default::default()
        })
}

fn policy() -> impl Strategy<Value = NoReadyPolicy> {
    prop_oneof![
        Just(NoReadyPolicy::Libvirt),
        (0u64..5000, 0u64..5000).prop_map(|(min, seen)| NoReadyPolicy::Grace {
            min: Duration::from_millis(min),
            seen_for: Duration::from_millis(seen),
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn never_done_before_ready(job in raw_job(), policy in policy(), bytes in any::<bool>()) {
        let flags = if bytes { VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES } else { 0 };
        let info = translate(Observation::Listed(&job), None, flags, policy).unwrap();
        prop_assert!(info.cur <= info.end, "cur > end: {:?} -> {:?}", job, info);
        if job.ready == Some(false) {
            // Nova reads cur == end as done, 0/0 included.
            prop_assert!(info.cur < info.end, "done before ready: {:?} -> {:?}", job, info);
        }
        // Progress is QEMU's own whenever QEMU's numbers are sane and not at their end.
        if job.offset < job.len {
            prop_assert_eq!((info.cur, info.end), (job.offset, job.len));
        }
        // Bandwidth: bytes with the flag, MiB rounded up without.
        let want = if bytes { job.speed } else { job.speed.div_ceil(1 << 20) };
        prop_assert_eq!(u64::from(info.bandwidth), want);
    }

    #[test]
    fn reply_text_never_panics(text in ".{0,200}", device in "[a-z-]{0,8}") {
        let _ = translate_reply(&text, &device, 0);
    }

    #[test]
    fn translate_reply_agrees_with_translate(job in raw_job()) {
        let mut entry = serde_json::json!({"type": job.job_type, "device": "j", "len": job.len,
                                          "offset": job.offset, "speed": job.speed});
        if let Some(r) = job.ready {
            entry["ready"] = r.into();
        }
        let text = serde_json::json!({"return": [entry]}).to_string();
        let via_text = translate_reply(&text, "j", 0).unwrap().unwrap();
        let direct = translate(Observation::Listed(&job), None, 0, NoReadyPolicy::Libvirt).unwrap();
        prop_assert_eq!(via_text, direct);
    }
}
