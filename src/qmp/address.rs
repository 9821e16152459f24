//! Where QEMU's monitor listens: a Unix socket path or a TCP host and port.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// Where QEMU's monitor listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp(String),
}

impl Address {
    /// `/path`, `unix:/path` or `tcp:host:port`.
    pub fn parse(text: &str) -> Result<Address> {
        let bad = |why: &str| Error::InvalidArg(format!("QMP address '{text}': {why}"));
        if let Some(hostport) = text.strip_prefix("tcp:") {
            match hostport.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    Ok(Address::Tcp(hostport.to_string()))
                }
                _ => Err(bad("expected tcp:HOST:PORT")),
            }
        } else {
            let path = text.strip_prefix("unix:").unwrap_or(text);
            if path.is_empty() {
                return Err(bad("empty socket path"));
            }
            Ok(Address::Unix(PathBuf::from(path)))
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp(hp) => write!(f, "tcp:{hp}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            Address::parse("/run/q.sock").unwrap(),
            Address::Unix("/run/q.sock".into())
        );
        assert_eq!(Address::parse("unix:/q").unwrap(), Address::Unix("/q".into()));
        assert_eq!(
            Address::parse("tcp:localhost:4444").unwrap(),
            Address::Tcp("localhost:4444".into())
        );
        assert_eq!(
            Address::parse("tcp:[::1]:4444").unwrap(),
            Address::Tcp("[::1]:4444".into())
        );
        for bad in ["", "unix:", "tcp:", "tcp:host", "tcp::1", "tcp:h:99999", "tcp:h:x"] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }
}
