//! The few facts the interposer needs from a domain's XML: each disk's target, alias and source, and its
//! `<mirror job=... ready=...>` while a copy or active commit runs.

use std::ffi::c_int;

use crate::abi;
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// `copy` or `active-commit`.
    pub job: Option<String>,
    /// Absent until the job converges, then `yes` (later `pivot` or `abort` while libvirt finishes it).
    pub ready: Option<String>,
}

impl Mirror {
    pub fn is_ready(&self) -> bool {
        self.ready.as_deref() == Some("yes")
    }

    /// libvirt's type for the job, which QEMU alone cannot give for an active commit.
    pub fn job_type(&self) -> Option<c_int> {
        match self.job.as_deref() {
            Some("copy") => Some(abi::VIR_DOMAIN_BLOCK_JOB_TYPE_COPY),
            Some("active-commit") => Some(abi::VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub target: String,
    /// Device alias (`virtio-disk0`), which pre-blockdev libvirt used in job names (`drive-virtio-disk0`).
    pub alias: Option<String>,
    /// The source path (file, block device, directory or network name), when it has one.
    pub source: Option<String>,
    pub mirror: Option<Mirror>,
}

/// The disks of a domain XML document.
pub fn disks(xml: &str) -> Result<Vec<Disk>> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| Error::Protocol(format!("domain XML: {e}")))?;
    let devices = doc.root_element().children().filter(|n| n.has_tag_name("devices"));
    Ok(devices
        .flat_map(|d| d.children().filter(|n| n.has_tag_name("disk")))
        .filter_map(|disk| {
            let child = |name: &str| disk.children().find(|n| n.has_tag_name(name));
            let target = child("target")?.attribute("dev")?.to_string();
            let source = child("source").and_then(|s| {
                ["file", "dev", "dir", "name"]
                    .iter()
                    .find_map(|a| s.attribute(*a))
                    .map(str::to_string)
            });
            Some(Disk {
                target,
                alias: child("alias").and_then(|a| a.attribute("name")).map(str::to_string),
                source,
                mirror: child("mirror").map(|m| Mirror {
                    job: m.attribute("job").map(str::to_string),
                    ready: m.attribute("ready").map(str::to_string),
                }),
            })
        })
        .collect())
}

/// The disk `name` means, as libvirt's QEMU driver resolves it (`qemuDomainDiskByName`, which calls
/// `virDomainDiskIndexByName` allowing ambiguity): a name without a leading `/` is a target (`vda`) and nothing
/// else; one with it is a source path, the first disk's that has it.
pub fn find<'a>(disks: &'a [Disk], name: &str) -> Option<&'a Disk> {
    match name.starts_with('/') {
        false => disks.iter().find(|d| d.target == name),
        true => disks.iter().find(|d| d.source.as_deref() == Some(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = r#"<domain type='qemu' id='3'>
  <name>d</name>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/img/top.qcow2' index='2'/>
      <backingStore type='file' index='1'><source file='/img/base.qcow2'/></backingStore>
      <mirror type='file' file='/img/copy.qcow2' format='qcow2' job='copy' ready='yes'>
        <format type='qcow2'/><source file='/img/copy.qcow2' index='3'/>
      </mirror>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
    </disk>
    <disk type='block' device='disk'>
      <source dev='/dev/sdz'/>
      <mirror type='file' job='active-commit'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>
    <interface type='user'><target dev='vnet0'/></interface>
  </devices>
</domain>"#;

    #[test]
    fn parses_disks_and_mirrors() {
        let d = disks(XML).unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].target, "vda");
        assert_eq!(d[0].alias.as_deref(), Some("virtio-disk0"));
        assert_eq!(d[0].source.as_deref(), Some("/img/top.qcow2"));
        let m = d[0].mirror.as_ref().unwrap();
        assert!(m.is_ready());
        assert_eq!(m.job_type(), Some(abi::VIR_DOMAIN_BLOCK_JOB_TYPE_COPY));
        let m = d[1].mirror.as_ref().unwrap();
        assert!(!m.is_ready());
        assert_eq!(m.job_type(), Some(abi::VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT));
        assert_eq!((d[2].source.as_deref(), d[2].mirror.as_ref()), (None, None));
    }

    #[test]
    fn a_name_is_a_target_or_a_source_path() {
        let mut d = disks(XML).unwrap();
        d[1].source = Some("vda".into());
        assert_eq!(find(&d, "vda").unwrap().target, "vda", "a name without / is a target");
        d[1].source = Some("pool/image".into());
        assert!(find(&d, "pool/image").is_none(), "a network name is no target");
        d[1].source = d[0].source.clone();
        assert_eq!(
            find(&d, "/img/top.qcow2").unwrap().target,
            "vda",
            "a path two disks share: the first"
        );
    }

    #[test]
    fn finds_by_target_then_source() {
        let d = disks(XML).unwrap();
        assert_eq!(find(&d, "vdb").unwrap().target, "vdb");
        assert_eq!(find(&d, "/img/top.qcow2").unwrap().target, "vda");
        assert_eq!(find(&d, "/dev/sdz").unwrap().target, "vdb");
        assert!(find(&d, "/img/base.qcow2").is_none(), "a backing file is not the disk");
        assert!(find(&d, "vdc").is_none());
        assert!(find(&d, "vnet0").is_none(), "interfaces are not disks");
    }

    #[test]
    fn malformed_xml_is_an_error() {
        assert!(disks("<domain><devices>").is_err());
        assert!(disks("").is_err());
        assert!(disks("<domain/>").unwrap().is_empty());
    }
}
