//! A disk is named as libvirt names it (`virDomainDiskIndexByName`), and a name libvirt refuses is an error
//! everywhere: the tool's `info -c` and `wait -c` (ready and gone) exit 7 with libvirt's message, and the drop-in's
//! sources (`qmp`, `passthrough`, `native`) fail as libvirt itself does. Each name is tried against virsh on the
//! same domain, on every stack: targets, a source path, a path two disks share (libvirt takes the first), a
//! backing file, an alias, the copy's own target, relative paths, and a domain that does not exist.

#[macro_use]
mod common;

use std::process::Output;

use common::virt::{self, Domain, Preload, UserNbd};
use common::*;

/// libvirt's error as virsh prints it (its last `error: ` line: virsh's own context comes first), or None if
/// virsh succeeded.
fn virsh_error(o: &Output) -> Option<String> {
    if o.status.success() {
        return None;
    }
    let err = String::from_utf8_lossy(&o.stderr);
    let line = err
        .lines()
        .filter_map(|l| l.strip_prefix("error: "))
        .next_back()
        .unwrap_or_else(|| panic!("virsh failed with no error line: {err}"));
    Some(line.to_string())
}

fn tool(dom: &Domain, args: &[&str]) -> Output {
    virt::tool(dom.stack, args).output().unwrap()
}

/// The tool's answer for a name virsh refused: exit 7 and libvirt's own words.
fn assert_refused(what: &str, o: &Output, libvirts: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(7),
        "{what}: exit 7 ({libvirts}): {}",
        common::shown(o)
    );
    assert!(
        err.contains(libvirts),
        "{what}: libvirt's message '{libvirts}' in: {}",
        common::shown(o)
    );
}

fn names_resolve_as_libvirt_resolves_them(s: &'static Stack) {
    // vdb and vdc share one read-only image: libvirt's QEMU driver takes the first disk with that path. vdd is
    // an NBD export named `vdq`: a source that is no path, which names no disk.
    let nbd = std::cell::OnceCell::new();
    let dom = Domain::create_with_disks(s, "bjt-names", 4, &|dir| {
        let o = virt::as_user(s, "qemu-img")
            .args(["create", "-q", "-f", "raw", &format!("{dir}/shared.raw"), "1M"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", common::shown(&o));
        let export = format!("driver=file,node-name=f,filename={dir}/shared.raw,locking=off");
        let net = nbd
            .get_or_init(|| UserNbd::start(s, dir, &export, "f", "vdq"))
            .disk_xml("vdq", Some("vdd"));
        let shared = ["vdb", "vdc"].map(|t| {
            format!(
                "    <disk type='file' device='disk'><driver name='qemu' type='raw'/>\
                 <source file='{dir}/shared.raw'/><target dev='{t}' bus='virtio'/><readonly/></disk>\n"
            )
        });
        format!("{}    {net}\n", shared.concat())
    });
    dom.start_copy(64 * 1024, 64 * 1024);
    let d = &dom.dir;
    let rel = d.trim_start_matches('/');
    let names: Vec<String> = vec![
        "vda".into(),
        format!("{d}/top.qcow2"),
        "vdb".into(),
        "vdz".into(),
        "vdq".into(),
        "top.qcow2".into(),
        format!("{rel}/top.qcow2"),
        format!("{d}/shared.raw"),
        format!("{d}/base.qcow2"),
        format!("{d}/copy.qcow2"),
        "virtio-disk0".into(),
        format!("{d}/nothing.qcow2"),
    ];
    let mut refused = 0;
    for name in &names {
        let what = format!("{}: disk '{name}'", s.name);
        let plain = dom.virsh(Preload::No, &["blockjob", &dom.name, name]);
        let libvirts = virsh_error(&plain);
        eprintln!("{what}: virsh {:?}", libvirts.as_deref().unwrap_or("answers"));
        // The drop-in, under each source, fails exactly where libvirt does, with libvirt's words.
        for source in ["qmp", "passthrough", "native"] {
            let o = dom.virsh(Preload::Source(source), &["blockjob", &dom.name, name]);
            assert_eq!(virsh_error(&o), libvirts, "{what}: the drop-in's {source} source");
        }
        let info = tool(&dom, &["info", "-c", "qemu:///session", &dom.name, name]);
        // A wait's timeout counts from its start, connecting included: a name libvirt refuses is refused long
        // before 30 s (a wait that waited instead would end with 5, not 7); the crawling copy's disk is waited
        // on for a second, in which it does not end.
        let timeout = if libvirts.is_some() { "30" } else { "1" };
        let [ready, gone] = ["--ready", "--gone"].map(|until| {
            let args = [
                "wait",
                "-c",
                "qemu:///session",
                &dom.name,
                name,
                until,
                "--timeout",
                timeout,
            ];
            tool(&dom, &args)
        });
        match &libvirts {
            Some(e) => {
                refused += 1;
                assert_refused(&format!("{what}: info"), &info, e);
                assert_refused(&format!("{what}: wait --ready"), &ready, e);
                assert_refused(&format!("{what}: wait --gone"), &gone, e);
            }
            None => {
                let job = String::from_utf8_lossy(&plain.stdout).contains("Block Copy");
                assert_eq!(info.status.code(), Some(0), "{what}: info: {info:?}");
                // The crawling copy's disk: its job, which neither wait sees end within a second.
                if job {
                    assert!(
                        String::from_utf8_lossy(&info.stdout).contains("Block Copy"),
                        "{what}: {info:?}"
                    );
                    assert_eq!(ready.status.code(), Some(5), "{what}: wait --ready: {ready:?}");
                    assert_eq!(gone.status.code(), Some(5), "{what}: wait --gone: {gone:?}");
                }
            }
        }
    }
    // The names of vda, vdb and the shared path answered; every other was refused: the test compared refusals.
    assert_eq!(refused, names.len() - 4, "{}: names refused", s.name);
    // And a domain that does not exist: virsh says so in its own words ("failed to get domain"), having tried the
    // name as an id and a UUID too; the tool gives libvirt's (VIR_ERR_NO_DOMAIN).
    let plain = dom.virsh(Preload::No, &["blockjob", "bjt-no-such-domain", "vda"]);
    assert!(
        virsh_error(&plain).is_some(),
        "virsh refuses a domain that does not exist"
    );
    let libvirts = "Domain not found: no domain with matching name 'bjt-no-such-domain'";
    for args in [
        &["info", "-c", "qemu:///session", "bjt-no-such-domain", "vda"][..],
        &["wait", "-c", "qemu:///session", "bjt-no-such-domain", "vda", "--gone"][..],
    ] {
        assert_refused(&format!("{}: {args:?}", s.name), &tool(&dom, args), libvirts);
    }
}

on_each_stack!(names_resolve_as_libvirt_resolves_them);
