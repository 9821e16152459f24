//! A recording proxy in front of the library's monitor: what the library sends, by connection.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;

use serde_json::Value;
/// A client of a `Recorder`: the pid of the process that connected, and what it sent.
type Connected = (u32, Arc<Mutex<Vec<u8>>>);

/// A Unix-socket proxy in front of the library's monitor that records every byte the library sends.
pub struct Recorder {
    pub path: String,
    sent: Arc<Mutex<Vec<u8>>>,
    /// What each connection sent, with the pid of the process that connected.
    by_connection: Arc<Mutex<Vec<Connected>>>,
    clients: Arc<Mutex<Vec<UnixStream>>>,
    /// While set, a new client is accepted but not yet connected to the upstream.
    held: Arc<(Mutex<bool>, std::sync::Condvar)>,
}

impl Recorder {
    pub fn start(dir: &Path, upstream: &str) -> Recorder {
        Recorder::start_at(dir.join("rec.sock").to_str().unwrap(), upstream)
    }

    /// Listens at `path` (connectable by anyone) and forwards to `upstream`.
    pub fn start_at(path: &str, upstream: &str) -> Recorder {
        let path = path.to_string();
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let upstream = upstream.to_string();
        let rec = sent.clone();
        let clients = Arc::new(Mutex::new(Vec::new()));
        let open = clients.clone();
        let held = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let hold = held.clone();
        let by_connection = Arc::new(Mutex::new(Vec::new()));
        let connections = by_connection.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let pid = nix::sys::socket::getsockopt(&client, nix::sys::socket::sockopt::PeerCredentials)
                    .map_or(0, |c| c.pid() as u32);
                let mine = Arc::new(Mutex::new(Vec::new()));
                connections.lock().unwrap().push((pid, mine.clone()));
                open.lock().unwrap().push(client.try_clone().unwrap());
                let (flag, changed) = &*hold;
                let _released = changed.wait_while(flag.lock().unwrap(), |h| *h).unwrap();
                let server = UnixStream::connect(&upstream).unwrap();
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut c, mut s) = (client, server);
                thread::spawn(move || {
                    let _ = std::io::copy(&mut s2, &mut c2);
                    let _ = c2.shutdown(std::net::Shutdown::Both);
                });
                let rec = rec.clone();
                thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    loop {
                        match c.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                rec.lock().unwrap().extend_from_slice(&buf[..n]);
                                mine.lock().unwrap().extend_from_slice(&buf[..n]);
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = s.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Recorder {
            path,
            sent,
            by_connection,
            clients,
            held,
        }
    }

    /// `cut`, then runs `meanwhile` before any new connection reaches the upstream: what happens there happens
    /// while the client has no connection.
    pub fn cut_holding(&self, meanwhile: impl FnOnce()) {
        let (flag, changed) = &*self.held;
        *flag.lock().unwrap() = true;
        self.cut();
        meanwhile();
        *flag.lock().unwrap() = false;
        changed.notify_all();
    }

    /// Drops every connection made so far, as a monitor that lets go of its client (QEMU lives on); later
    /// connections are forwarded as before.
    pub fn cut(&self) {
        for c in self.clients.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// The `execute` names sent on each connection so far, with the pid of the process that connected.
    pub fn commands_by_connection(&self) -> Vec<(u32, Vec<String>)> {
        self.by_connection
            .lock()
            .unwrap()
            .iter()
            .map(|(pid, sent)| (*pid, names(&sent.lock().unwrap())))
            .collect()
    }

    /// The `execute` names of every command sent so far.
    pub fn commands(&self) -> Vec<String> {
        names(&self.sent.lock().unwrap())
    }
}

/// The `execute` names in bytes a client sent.
fn names(bytes: &[u8]) -> Vec<String> {
    serde_json::Deserializer::from_slice(bytes)
        .into_iter::<Value>()
        .map(|v| {
            v.expect("the library sends valid JSON")["execute"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}
