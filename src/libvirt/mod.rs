//! The one place that talks to libvirt, used by the interposer (the drop-in `virDomainGetBlockJobInfo`) and by
//! programs such as the tool: `api` (libvirt's functions, found at run time), `xml` (what the domain XML says
//! about disks and mirrors), `native` (libvirt's answer corrected by the XML), `host` (every block job of a
//! libvirt host), `interposer` (the drop-in's sources). Nothing here depends on the C layer.

pub mod api;
pub mod host;
pub mod interposer;
pub mod native;
pub mod xml;
