//! `Peer::Process`: the process listening on a QMP socket must be that very process. A pid number is not
//! enough: a listener made by a process that has since exited still reports that pid (`SO_PEERCRED`), which
//! may by then belong to another process (a domain's new QEMU). Such a listener is refused, by the pidfd of
//! the process that made it (`SO_PEERPIDFD`). A fake monitor: no QEMU hands its listener on.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use blockjobinfo::{Error, Limits, Peer, QmpSource};

/// A QMP monitor whose listening socket was made by a process that has exited, and is served by its child:
/// (socket path, the exited maker's pid, the child).
fn handed_on_listener(dir: &std::path::Path) -> (String, u32, std::process::Child) {
    let path = dir.join("qmp.sock").to_str().unwrap().to_string();
    let script = r#"
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(4)
maker = os.getpid()
if os.fork() == 0:
    os.setsid()
    print(maker, flush=True)
    while True:
        c, _ = s.accept(); f = c.makefile("rw")
        try:
            f.write(json.dumps({"QMP": {"version": {"qemu": {"major": 9, "minor": 0, "micro": 0}, "package": ""}, "capabilities": []}}) + "\n"); f.flush()
            for line in f:
                f.write(json.dumps({"return": {} if "capabilities" in line else []}) + "\n"); f.flush()
        except OSError:
            pass  # a client that left at once: the next one
os._exit(0)
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script, &path])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let maker: u32 = line.trim().parse().unwrap();
    // The maker is reaped: its pid number is free for any new process.
    assert!(child.wait().unwrap().success());
    (path, maker, child)
}

#[test]
fn a_listener_whose_maker_exited_is_not_that_process() {
    let dir = tempfile::tempdir().unwrap();
    let (path, maker, _) = handed_on_listener(dir.path());
    let _gone = KillOnDrop(path.clone());
    let limits = Limits::default();
    // The listener itself answers: the check, not the monitor, is what refuses it.
    assert!(QmpSource::open_with(&path, limits).is_ok());
    match QmpSource::open_from(&path, limits, Some(Peer::Process(maker))) {
        Err(Error::Peer { why, .. }) => assert!(why.contains("has exited"), "{why}"),
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a listener made by exited process {maker} was taken for it"),
    }
    // Who listens is told by the process, not the number: our own pid is not the listener either.
    match QmpSource::open_from(&path, limits, Some(Peer::Process(std::process::id()))) {
        Err(Error::Peer { .. }) => {}
        other => panic!("{:?}", other.err()),
    }
}

/// Ends the monitor that serves the socket at the path, however the test ends.
struct KillOnDrop(String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("pkill").args(["-f", &self.0]).status();
    }
}

#[test]
fn the_listening_process_itself_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qmp.sock").to_str().unwrap().to_string();
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        for c in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut w = c.try_clone().unwrap();
                let _ = w.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": 9, \"minor\": 0, \"micro\": 0}, \"package\": \"\"}, \"capabilities\": []}}\n");
                for line in BufReader::new(c).lines().map_while(Result::ok) {
                    let reply = if line.contains("capabilities") {
                        "{\"return\": {}}\n"
                    } else {
                        "{\"return\": []}\n"
                    };
                    let _ = w.write_all(reply.as_bytes());
                }
            });
        }
    });
    let src = QmpSource::open_from(&path, Limits::default(), Some(Peer::Process(std::process::id())))
        .expect("this process listens there");
    assert!(src.all_reports(0).unwrap().is_empty());
    let uid = nix::unistd::getuid().as_raw();
    assert!(QmpSource::open_from(&path, Limits::default(), Some(Peer::Users(vec![uid]))).is_ok());
    match QmpSource::open_from(&path, Limits::default(), Some(Peer::Users(vec![uid + 1]))) {
        Err(Error::Peer { why, .. }) => assert!(why.contains(&format!("runs as uid {uid}")), "{why}"),
        other => panic!("{:?}", other.err()),
    }
}
