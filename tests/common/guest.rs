//! A guest that writes: the stack's `qemu-system-x86_64` booting the kernel and initramfs `scripts/guest.sh`
//! made (tests/guest/init), which writes to its virtio disk at a set rate over a set region, with a QMP monitor
//! for the test (`ctl`) and one for the library (`lib.sock`). KVM where this machine's KVM can boot it, TCG
//! otherwise, as `scripts/guest.sh` found and every test prints: never skipped.

use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{die_with_parent, Control, Stack, MIB};

/// The guest's QMP monitors, each `NAME.sock` in its directory.
const MONITORS: [&str; 5] = ["ctl", "lib", "tool", "wait", "report"];

/// How a guest is booted and what it writes.
#[derive(Debug, Clone, Copy)]
pub struct Writes {
    /// The disk's size in MiB (raw, filled with a pattern of its own before boot, so that every byte is data).
    pub disk_mib: u64,
    /// KiB/s the guest writes (0: none).
    pub rate_kib: u64,
    /// The region written, in MiB from the disk's start.
    pub from_mib: u64,
    pub size_mib: u64,
}

pub struct Guest {
    pub stack: &'static Stack,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    pub ctl: Control,
    /// `kvm`, or `tcg: why`.
    pub accel: String,
    pub writes: Writes,
    /// At most GUESTS writing guests on the machine at once: their rates are the tests' subject, and more
    /// guests under TCG than cores would take the cores their copies need.
    _slot: super::HostLock,
    /// Its report monitor, read if the test fails.
    _watching: super::report::Watching,
}

/// How many writing guests may run at once on the machine (one per core of this 2-core machine: a guest
/// writing 4 MiB/s under TCG takes a fifth of a core, its copy and the test the rest).
const GUESTS: usize = 2;

/// One of the GUESTS slots, waited for (the gate's lanes reach these tests together).
fn guest_slot() -> super::HostLock {
    let deadline = Instant::now() + Duration::from_secs(1200);
    loop {
        for i in 0..GUESTS {
            if let Some(l) = super::try_host_lock(&format!("writing-guest-{i}"), Duration::from_millis(50)) {
                return l;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no writing-guest slot came free in 20 minutes"
        );
    }
}

/// The guest's kernel and initramfs, and how this machine runs them.
fn made() -> (std::path::PathBuf, String) {
    let dir = super::stack::cache().join("guest");
    let accel = std::fs::read_to_string(dir.join("accel")).unwrap_or_else(|_| {
        panic!(
            "the writing guest is not made at {}: run `scripts/guest.sh prepare` as root (`make test` does)",
            dir.display()
        )
    });
    (dir, accel.trim().to_string())
}

impl Guest {
    /// Boots a guest on stack `s` and waits until it writes (or, at rate 0, idles).
    pub fn boot(s: &'static Stack, writes: Writes) -> Guest {
        let (made, accel) = made();
        let slot = guest_slot();
        let dir = s.tempdir();
        let inside = s.inside(dir.path());
        for f in ["vmlinuz", "initrd.gz"] {
            std::fs::copy(made.join(f), dir.path().join(f)).unwrap();
        }
        // Every byte data, so that the copy's pace is its speed's, not a skip over zeroes.
        super::run(s.root_command("qemu-img").args([
            "create",
            "-q",
            "-f",
            "raw",
            &format!("{inside}/disk.raw"),
            &(writes.disk_mib * MIB).to_string(),
        ]));
        super::run(s.root_command("qemu-io").args([
            "-f",
            "raw",
            "-c",
            &format!("write -P 0x5a 0 {}", writes.disk_mib * MIB),
            &format!("{inside}/disk.raw"),
        ]));
        println!("{}: guest accelerator: {accel}", s.name);
        let report = dir.path().join("report.sock").to_str().unwrap().to_string();
        let mut g = Guest {
            stack: s,
            dir,
            child: None,
            ctl: Control::dummy(),
            accel,
            writes,
            _slot: slot,
            _watching: super::report::watch_jobs(&format!("{}'s guest", s.name), &report),
        };
        g.spawn();
        g
    }

    fn spawn(&mut self) {
        let s = self.stack;
        let inside = s.inside(self.dir.path());
        let p = |n: &str| format!("{inside}/{n}");
        let w = self.writes;
        let kvm = self.accel == "kvm";
        let mut cmd: Command = if kvm && !s.is_host() {
            // KVM inside a root needs its /dev: bound in a mount namespace of its own, gone with the process.
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "sh", "-c"]).arg(format!(
                "mount --bind /dev {root}/dev && exec chroot {root} qemu-system-x86_64 \"$@\"",
                root = s.host("/").display()
            ));
            c.arg("qemu");
            c
        } else {
            s.root_command("qemu-system-x86_64")
        };
        cmd.args(["-accel", if kvm { "kvm" } else { "tcg" }])
            .args([
                "-m",
                "256",
                "-smp",
                "1",
                "-nodefaults",
                "-display",
                "none",
                "-no-reboot",
            ])
            .args(["-serial", &format!("file:{}", p("serial.log"))])
            .args(["-kernel", &p("vmlinuz"), "-initrd", &p("initrd.gz")])
            .args([
                "-append",
                &format!(
                    "console=ttyS0 quiet panic=-1 bji.rate={} bji.from={} bji.size={}",
                    w.rate_kib, w.from_mib, w.size_mib
                ),
            ])
            .args([
                "-blockdev",
                &format!("driver=file,node-name=disk0-file,filename={}", p("disk.raw")),
            ])
            .args(["-blockdev", "driver=raw,node-name=disk0,file=disk0-file"])
            .args(["-device", "virtio-blk-pci,drive=disk0,id=vda"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // The test's, the library's, the tool's, one more for a tool's wait beside it (a monitor serves one
        // client at a time), and one read only if the test fails (report.rs).
        for m in MONITORS {
            cmd.args([
                "-chardev",
                &format!("socket,id={m},path={},server=on,wait=off", p(&format!("{m}.sock"))),
            ])
            .args(["-mon", &format!("chardev={m},mode=control")]);
        }
        self.child = Some(die_with_parent(&mut cmd).spawn().expect("qemu-system-x86_64"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !MONITORS.iter().all(|m| self.path(&format!("{m}.sock")).exists()) {
            assert!(Instant::now() < deadline, "{}: QEMU did not create its sockets", s.name);
            thread::sleep(Duration::from_millis(10));
        }
        self.ctl = Control::connect(self.path("ctl.sock").to_str().unwrap());
        let word = if w.rate_kib == 0 { "bji: idle" } else { "bji: pass 1" };
        self.wait_serial(word, Duration::from_secs(120));
    }

    /// `name` in the guest's directory, on the host.
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// The library's monitor, on the host.
    pub fn lib_socket(&self) -> String {
        self.path("lib.sock").to_str().unwrap().to_string()
    }

    /// A monitor for the tool (a monitor serves one client at a time), on the host.
    pub fn tool_socket(&self) -> String {
        self.path("tool.sock").to_str().unwrap().to_string()
    }

    /// Another, for a tool's wait beside it.
    pub fn wait_socket(&self) -> String {
        self.path("wait.sock").to_str().unwrap().to_string()
    }

    /// The in-stack path of `name` in the guest's directory (what QEMU is given).
    pub fn inside(&self, name: &str) -> String {
        format!("{}/{name}", self.stack.inside(self.dir.path()))
    }

    pub fn serial(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.path("serial.log")).unwrap_or_default()).into_owned()
    }

    /// Waits until the guest's console says `text`.
    pub fn wait_serial(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.serial().contains(text) {
            assert!(
                Instant::now() < deadline,
                "{}: the guest did not say {text:?} within {timeout:?}; its console:\n{}",
                self.stack.name,
                self.serial()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last pass the guest began over its region (0 before the first).
    pub fn last_pass(&self) -> u64 {
        self.serial()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("bji: pass ")?.trim().parse().ok())
            .max()
            .unwrap_or(0)
    }

    /// An empty raw image of the disk's size in the guest's directory; its in-stack path.
    pub fn make_image(&self, name: &str) -> String {
        let file = self.inside(name);
        super::run(self.stack.root_command("qemu-img").args([
            "create",
            "-q",
            "-f",
            "raw",
            &file,
            &(self.writes.disk_mib * MIB).to_string(),
        ]));
        file
    }

    /// An empty image of the disk's size, added as node `node` (a mirror's target), in `{node}.raw`.
    pub fn add_target(&mut self, node: &str) {
        let file = self.make_image(&format!("{node}.raw"));
        self.ctl.ok(
            "blockdev-add",
            json!({"driver": "raw", "node-name": node, "file": {"driver": "file", "filename": file}}),
        );
    }

    /// Reads `len` bytes at `offset` of the image `name` in the guest's directory.
    pub fn read_image(&self, name: &str, offset: u64, len: usize) -> Vec<u8> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(self.path(name)).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        let mut buf = vec![0; len];
        f.read_exact(&mut buf).unwrap();
        buf
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
