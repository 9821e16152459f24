//! A scriptable QMP server, for the faults a real QEMU cannot be made to produce (garbage, EOF mid-reply,
//! stalls, hostile sizes). Never a stand-in for QEMU where the real one can be used.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use serde_json::{json, Value};

/// One client connection as the script sees it.
pub struct FakeConn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    commands: Arc<Mutex<Vec<String>>>,
    recording: Arc<AtomicBool>,
}

impl FakeConn {
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.writer.write_all(bytes).is_ok()
    }

    /// Closes the sending side: the client sees EOF.
    pub fn writer_shutdown(&mut self) {
        let _ = self.writer.shutdown(std::net::Shutdown::Write);
    }

    pub fn greet_with(&mut self, major: u64, minor: u64) -> bool {
        let g = json!({"QMP": {"version": {"qemu": {"major": major, "minor": minor, "micro": 0}, "package": ""},
                       "capabilities": []}});
        self.send(format!("{g}\r\n").as_bytes())
    }

    /// Reads one command (one line: the library sends compact JSON), records its name and returns it.
    pub fn command(&mut self) -> Option<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let v: Value = serde_json::from_str(&line).ok()?;
        self.commands
            .lock()
            .unwrap()
            .push(v["execute"].as_str().unwrap_or("?").to_string());
        Some(v)
    }

    /// As QEMU answers: with the command's `id` if it carried one.
    pub fn reply(&mut self, cmd: &Value, ret: Value) -> bool {
        let mut r = json!({"return": ret});
        if let Some(id) = cmd.get("id") {
            r["id"] = id.clone();
        }
        self.send(format!("{r}\r\n").as_bytes())
    }

    /// Greeting (QEMU 7.2) and capability negotiation.
    pub fn handshake(&mut self) -> bool {
        if !self.greet_with(7, 2) {
            return false;
        }
        match self.command() {
            Some(c) => self.reply(&c, json!({})),
            None => false,
        }
    }

    /// Reads one command and answers it as QEMU in state `answers` would (an object of command name to its
    /// `return` value; a command it lacks is CommandNotFound). Returns the command's name, None once the client
    /// left.
    pub fn answer(&mut self, answers: &Value) -> Option<String> {
        let cmd = self.command()?;
        let name = cmd["execute"].as_str().unwrap_or("").to_string();
        let sent = match answers.get(&name) {
            Some(ret) => self.reply(&cmd, ret.clone()),
            None => {
                let mut r = json!({"error": {"class": "CommandNotFound", "desc": format!("The command {name} has not been found")}});
                if let Some(id) = cmd.get("id") {
                    r["id"] = id.clone();
                }
                self.send(format!("{r}\r\n").as_bytes())
            }
        };
        sent.then_some(name)
    }

    /// Sends QEMU's event `name` with `data`.
    pub fn event(&mut self, name: &str, data: Value) -> bool {
        let e = json!({"event": name, "data": data, "timestamp": {"seconds": 1, "microseconds": 0}});
        self.send(format!("{e}\r\n").as_bytes())
    }

    /// Answers every query with `jobs` until the client leaves.
    pub fn serve(&mut self, jobs: &Value) {
        while let Some(c) = self.command() {
            if !self.reply(&c, jobs.clone()) {
                return;
            }
        }
    }
}

pub type Script = dyn Fn(usize, &mut FakeConn) + Send + Sync;

pub struct FakeQmp {
    pub path: String,
    pub commands: Arc<Mutex<Vec<String>>>,
    pub connections: Arc<AtomicUsize>,
    recording: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl FakeQmp {
    /// Serves each connection (numbered from 0) with `script` in a thread of its own.
    pub fn start(script: impl Fn(usize, &mut FakeConn) + Send + Sync + 'static) -> FakeQmp {
        let dir = tempfile::Builder::new().prefix("bji-fake-").tempdir().unwrap();
        let path = dir.path().join("qmp.sock").to_str().unwrap().to_string();
        let listener = UnixListener::bind(&path).unwrap();
        let commands = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let script: Arc<Script> = Arc::new(script);
        let recording = Arc::new(AtomicBool::new(true));
        let (cmds, conns, rec) = (commands.clone(), connections.clone(), recording.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let n = conns.fetch_add(1, Ordering::SeqCst);
                let script = script.clone();
                let commands = cmds.clone();
                let recording = rec.clone();
                thread::spawn(move || {
                    let writer = stream.try_clone().unwrap();
                    let mut conn = FakeConn {
                        reader: BufReader::new(stream),
                        writer,
                        commands,
                        recording,
                    };
                    script(n, &mut conn);
                });
            }
        });
        FakeQmp {
            path,
            commands,
            connections,
            recording,
            _dir: dir,
        }
    }

    /// Stops keeping the commands received (a long run would grow the test's own memory).
    pub fn stop_recording(&self) {
        self.recording.store(false, Ordering::Relaxed);
    }

    pub fn commands(&self) -> Vec<String> {
        self.commands.lock().unwrap().clone()
    }
}

/// A well-formed `query-block-jobs` entry.
pub fn job(device: &str, offset: u64, len: u64, ready: Option<bool>) -> Value {
    let mut j = json!({"type": "mirror", "device": device, "len": len, "offset": offset, "speed": 0,
                       "busy": false, "paused": false, "io-status": "ok", "status": "running",
                       "auto-finalize": true, "auto-dismiss": true});
    if let Some(r) = ready {
        j["ready"] = r.into();
    }
    j
}
