//! Every block job of a libvirt host, as a program that talks to libvirt sees it (the tool's `list`, `info -c`
//! and `metrics`): per running domain, the XML read once, then libvirt's own answer per disk, corrected by the
//! `native` rules with that same XML.

use std::ffi::CString;

use crate::abi::{virDomainBlockJobInfo, VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES};
use crate::error::{Error, Result};

use super::api::{Connection, Domain};
use super::native;
use super::xml::{self, Mirror};

/// One disk's block job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskJob {
    /// The disk's target (`vda`).
    pub disk: String,
    /// libvirt's own answer.
    pub libvirt: virDomainBlockJobInfo,
    /// The answer by blockjobinfo's rules (libvirt's, corrected by the XML's mirror state).
    pub info: virDomainBlockJobInfo,
    /// The disk's `<mirror>` while a copy or active commit runs.
    pub mirror: Option<Mirror>,
}

/// The block jobs of one running domain, or why they could not be read (it stopped, libvirt failed).
#[derive(Debug)]
pub struct DomainJobs {
    pub domain: String,
    pub jobs: Result<Vec<DiskJob>>,
}

/// The block jobs of `dom`, or of its one disk `only` names (a target, or a source path as libvirt accepts):
/// its XML once, then libvirt's answer for each disk asked about (`flags` as for `virDomainGetBlockJobInfo`: 0
/// for MiB/s, `VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES` for bytes/s).
pub fn domain_jobs(dom: &Domain<'_>, flags: std::ffi::c_uint, only: Option<&str>) -> Result<Vec<DiskJob>> {
    let mut disks = xml::disks(&dom.xml()?)?;
    if let Some(name) = only {
        disks = xml::find(&disks, name).cloned().into_iter().collect();
    }
    let mut jobs = vec![];
    for disk in disks {
        let target = CString::new(disk.target.clone()).map_err(|_| Error::Protocol("NUL in a disk target".into()))?;
        let (rc, answer) = dom.real_block_job_info(&target, flags);
        match rc {
            1 => jobs.push(DiskJob {
                info: native::correct(answer, disk.mirror.as_ref()),
                libvirt: answer,
                disk: disk.target,
                mirror: disk.mirror,
            }),
            0 => {}
            _ => return Err(Error::Libvirt(dom.last_error())),
        }
    }
    Ok(jobs)
}

/// Every running domain's block jobs (bandwidth in bytes/s), in libvirt's order of domains and the XML's order
/// of disks. A domain that fails (destroyed while being read, say) carries its error; the others are unaffected.
pub fn all_jobs(conn: &Connection) -> Result<Vec<DomainJobs>> {
    let mut out = vec![];
    for owned in conn.active_domains()? {
        let dom = owned.domain();
        let domain = match dom.name() {
            Ok(n) => n,
            Err(e) => {
                out.push(DomainJobs {
                    domain: "?".into(),
                    jobs: Err(e),
                });
                continue;
            }
        };
        out.push(DomainJobs {
            jobs: domain_jobs(&dom, VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES, None),
            domain,
        });
    }
    Ok(out)
}
