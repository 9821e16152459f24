//! A real libvirt stack for tests: an unprivileged user's session libvirtd (started by `setup`, never autostarted),
//! transient TCG domains on qcow2 overlays with a QMP socket of their own, and virsh/python/C run as that user,
//! with or without the library preloaded.
//! Split by concern: the session daemon, virsh and the tool, the jobs' arguments, the domains.

use super::stack::Stack;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod copies;
mod daemon;
mod domain;
mod virsh;

pub use copies::*;
pub use daemon::*;
pub use domain::*;
pub use virsh::*;
