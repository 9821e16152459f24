//! blockjobinfo: libvirt-exact block job progress from QEMU.
//!
//! Answers `virDomainGetBlockJobInfo()`'s question with libvirt's own struct and rules, so that `cur == end`
//! is never reported before QEMU says the job is ready. Data flows one way:
//! [`qmp`] (bytes from QEMU) -> [`jobs`] (parsed `query-block-jobs`) -> [`translate`] (the rules) ->
//! [`abi`] (libvirt's struct), with [`source`] tying a QEMU to the rules and [`ffi`] exposing it to C.

pub mod abi;
pub mod convergence;
pub mod ending;
pub mod environment;
pub mod error;
#[cfg(feature = "c-api")]
pub mod ffi;
#[doc(hidden)]
pub mod fuzzing;
pub mod jobs;
pub mod libvirt;
pub mod logging;
pub mod qmp;
pub mod source;
pub mod translate;
pub mod verdict;
pub mod wait;
pub mod watch;

pub use abi::*;
pub use ending::{Ended, Ending};
pub use error::{Error, Result};
pub use jobs::{parse_jobs, parse_reply_text, select};
pub use qmp::{Address, Limits, Peer, QemuVersion};
pub use source::{JobReport, QmpSource};
pub use translate::{translate, NoReadyPolicy, Observation, RawJob};
pub use wait::{Outcome, Until, Waited};

/// The answer for `device` from the text of a `query-block-jobs` reply, with libvirt's rules.
pub fn translate_reply(reply: &str, device: &str, flags: std::ffi::c_uint) -> Result<Option<virDomainBlockJobInfo>> {
    translate::check_flags(flags, "bji_translate_reply")?;
    let jobs = parse_reply_text(reply)?;
    select(&jobs, device)?
        .map(|job| translate(Observation::Listed(job), None, flags, NoReadyPolicy::Libvirt))
        .transpose()
}
