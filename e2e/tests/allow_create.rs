//! Links members may create in (`allowCreate`), with "pods" (processes in their own
//! mount, IPC and network namespaces, running as uid 1000 or 2000, the link bound at
//! /dev/shm as a container sees its publication): a program we did not write that makes
//! its own objects (Python's multiprocessing.shared_memory) works across pods only with
//! `allowCreate`; no member can remove or replace a declared object (root's own, its
//! owner in the ACL) or another uid's object; the tmpfs still says ENOSPC by bytes and
//! by inodes; a live change of `allowCreate` sets the root's mode, guards or gives back
//! the objects and keeps every object and its data, with no mount per object.

use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use ipclink_core::{StorageMode, Store};
use ipclink_testkit::mounts::{mount_line, snapshot};
use ipclink_testkit::{
    describe, repo_root, require_root, require_tool, spawn_pod_as, wait_with_timeout,
};

/// Debian's Python, as a pod image would have it.
const PYTHON: &str = "/usr/bin/python3";

fn link(name: &str, allow_create: bool, size: &str) -> String {
    format!(
        r#"
apiVersion: ipclink.dev/v1alpha1
kind: IpcLink
metadata: {{ name: {name}, namespace: py }}
spec:
  sizeLimit: {size}
  allowCreate: {allow_create}
  owner: {{ uid: 1000, gid: 1000 }}
  channels:
    - {{ name: frames,  kind: shm,    size: 64Ki, mode: "0666" }}
    - {{ name: events,  kind: fifo,   mode: "0666" }}
    - {{ name: control, kind: socket, mode: "0777" }}
  semaphores:
    - {{ name: slots, initial: 8 }}
"#
    )
}

/// The example script, copied where any uid can read it.
fn script(dir: &Path) -> PathBuf {
    let to = dir.join("shm_pair.py");
    std::fs::copy(repo_root().join("examples/python/shm_pair.py"), &to).expect("copy");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    to
}

/// Runs `script` with `sh -c` in a pod as `uid:uid`.
fn pod_sh(dir: &Path, uid: u32, script: &str) -> Output {
    wait_with_timeout(
        spawn_pod_as(dir, uid, uid, Path::new("/bin/sh"), &["-c", script]),
        Duration::from_secs(60),
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn python_shares_a_region_it_creates_across_pods_only_with_allow_create() {
    require_root();
    require_tool(PYTHON);
    let base = tempfile::tempdir().expect("temp dir");
    let scripts = tempfile::tempdir().expect("temp dir");
    let py = script(scripts.path());
    let py = py.to_str().expect("utf-8");
    let store = Store::open(base.path(), StorageMode::Tmpfs).expect("store");

    // Without allowCreate the producer's shm_open(O_CREAT) is refused, and nothing
    // appears in the link.
    let (_plan, _closed) = ipclink_testkit::materialize(&store, &link("closed", false, "4Mi"));
    let closed = store.link_path("py", "closed");
    let before = snapshot(&closed);
    let out = wait_with_timeout(
        spawn_pod_as(&closed, 1000, 1000, Path::new(PYTHON), &[py, "producer"]),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(13), "{}", describe(&out));
    assert!(
        text(&out).contains("Permission denied"),
        "{}",
        describe(&out)
    );
    assert_eq!(
        snapshot(&closed),
        before,
        "a refused create changed the link"
    );

    // With it, the same two programs exchange every frame.
    let (_plan, _open) = ipclink_testkit::materialize(&store, &link("open", true, "4Mi"));
    let open = store.link_path("py", "open");
    let consumer = spawn_pod_as(&open, 1000, 1000, Path::new(PYTHON), &[py, "consumer"]);
    let producer = spawn_pod_as(&open, 1000, 1000, Path::new(PYTHON), &[py, "producer"]);
    let p = wait_with_timeout(producer, Duration::from_secs(120));
    let c = wait_with_timeout(consumer, Duration::from_secs(120));
    assert!(p.status.success(), "producer: {}", describe(&p));
    assert!(c.status.success(), "consumer: {}", describe(&c));
    assert!(text(&p).contains("producer ok 200"), "{}", describe(&p));
    assert!(
        text(&c).contains("consumer ok 200 frames checked"),
        "{}",
        describe(&c)
    );
    // The producer removed its own region at the end, as Python's unlink() does.
    assert!(!open.join("py-frames").exists());
}

#[test]
fn no_member_removes_or_replaces_a_declared_object_or_another_uids_object() {
    require_root();
    require_tool(PYTHON);
    let base = tempfile::tempdir().expect("temp dir");
    let store = Store::open(base.path(), StorageMode::Tmpfs).expect("store");
    let (_plan, _guard) = ipclink_testkit::materialize(&store, &link("safe", true, "4Mi"));
    let dir = store.link_path("py", "safe");
    let root = std::fs::metadata(&dir).expect("stat");
    assert_eq!(root.permissions().mode() & 0o7777, 0o1777);

    // uid 1000 is the declared objects' owner (through their ACL: they are root's),
    // writes to them, and still cannot remove or replace them; no mount guards them.
    for o in ["frames", "events", "control", "sem.slots"] {
        let st = std::fs::metadata(dir.join(o)).expect("stat");
        assert_eq!((st.uid(), st.gid()), (0, 1000), "{o}");
        assert!(mount_line(&dir.join(o)).is_none(), "{o} is a mount");
    }
    let before = snapshot(&dir);
    let out = pod_sh(
        &dir,
        1000,
        r#"printf ok | dd of=/dev/shm/frames bs=2 seek=100 conv=notrunc 2>/dev/null && echo wrote
           for o in frames events sem.slots; do rm -f /dev/shm/$o 2>&1; done
           rmdir /dev/shm/control 2>&1
           echo data > /dev/shm/mine; mv /dev/shm/mine /dev/shm/frames 2>&1
           mkfifo /dev/shm/myfifo; mv /dev/shm/myfifo /dev/shm/events 2>&1
           rm /dev/shm/mine /dev/shm/myfifo; echo done"#,
    );
    let t = text(&out);
    assert!(t.starts_with("wrote\n") && t.ends_with("done\n"), "{t}");
    assert_eq!(
        t.matches("Operation not permitted").count(),
        6,
        "every removal and replacement of a declared object is EPERM:\n{t}"
    );
    let written = std::fs::read(dir.join("frames")).expect("read");
    assert_eq!(&written[200..202], b"ok", "the owner's write did not land");
    // The write changed the region's bytes, nothing else.
    let mut after = snapshot(&dir);
    after.retain(|l| !l.contains("frames"));
    let mut was = before.clone();
    was.retain(|l| !l.contains("frames"));
    assert_eq!(after, was, "a declared object changed:\n{t}");

    // uid 1000 makes a file, a FIFO and a bound socket; uid 2000 may remove none of them.
    let out = pod_sh(
        &dir,
        1000,
        &format!(
            r#"echo mine > /dev/shm/mine && mkfifo /dev/shm/myfifo &&
               {PYTHON} -c 'import socket; socket.socket(socket.AF_UNIX).bind("/dev/shm/mysock")' &&
               echo made"#
        ),
    );
    assert!(text(&out).contains("made"), "{}", describe(&out));
    let made = snapshot(&dir);
    let out = pod_sh(
        &dir,
        2000,
        r#"for o in mine myfifo mysock; do rm -f /dev/shm/$o 2>&1; mv /dev/shm/$o /dev/shm/$o.x 2>&1; done
           echo theirs > /dev/shm/mine 2>&1; echo done"#,
    );
    let t = text(&out);
    assert_eq!(
        t.matches("Operation not permitted").count(),
        6,
        "sticky root: removing or renaming another uid's object is EPERM:\n{t}"
    );
    assert!(t.contains("Permission denied"), "its file is 0644:\n{t}");
    assert_eq!(
        snapshot(&dir),
        made,
        "uid 2000 changed uid 1000's objects:\n{t}"
    );
    // Its owner may remove them.
    let out = pod_sh(
        &dir,
        1000,
        "rm /dev/shm/mine /dev/shm/myfifo /dev/shm/mysock && echo gone",
    );
    assert!(text(&out).contains("gone"), "{}", describe(&out));
}

#[test]
fn members_get_enospc_by_bytes_and_by_inodes() {
    require_root();
    let base = tempfile::tempdir().expect("temp dir");
    let store = Store::open(base.path(), StorageMode::Tmpfs).expect("store");
    let (plan, _guard) = ipclink_testkit::materialize(&store, &link("full", true, "1Mi"));
    let dir = store.link_path("py", "full");
    let out = pod_sh(
        &dir,
        1000,
        "dd if=/dev/zero of=/dev/shm/big bs=64k count=32 2>&1; rm -f /dev/shm/big",
    );
    assert!(
        text(&out).contains("No space left on device"),
        "{}",
        describe(&out)
    );
    let out = pod_sh(
        &dir,
        1000,
        // `true`, not `:`: a failed redirection of a special builtin ends dash.
        r#"i=0; while true > /dev/shm/f$i 2>/dev/null; do i=$((i+1)); done
           echo created $i; true > /dev/shm/one-more"#,
    );
    let t = text(&out);
    assert!(t.contains("No space left on device"), "{t}");
    let created: u64 = t
        .split("created ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {t}"));
    // nr_inodes is objects + 4096 (+16 per socket channel); the root and the declared
    // objects hold some.
    assert!(
        created < plan.nr_inodes && created + 16 >= plan.nr_inodes - plan.objects.len() as u64,
        "{created} files in a tmpfs of {} inodes",
        plan.nr_inodes
    );
}

#[test]
fn a_live_change_of_allow_create_sets_the_root_and_keeps_every_object() {
    require_root();
    let base = tempfile::tempdir().expect("temp dir");
    let store = Store::open(base.path(), StorageMode::Tmpfs).expect("store");
    let (closed, _guard) = ipclink_testkit::materialize(&store, &link("live", false, "4Mi"));
    let dir = store.link_path("py", "live");
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("frames"))
        .and_then(|f| f.write_all_at(b"kept across root changes", 0))
        .expect("write into the region");
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
    let owner = |p: &Path| {
        let st = std::fs::metadata(p).expect("stat");
        (st.uid(), st.gid())
    };
    assert_eq!(mode(&dir), 0o755);
    let objects = ["frames", "events", "control", "sem.slots"];
    for o in objects {
        assert_eq!(owner(&dir.join(o)), (1000, 1000), "{o} while closed");
    }

    let open = ipclink_core::validate(
        &ipclink_core::parse_links("live", &link("live", true, "4Mi")).expect("parse")[0],
    )
    .expect("valid");
    let outcome = store.materialize(&open).expect("open the link");
    assert!(outcome.created.is_empty(), "{outcome:?}");
    assert_eq!(mode(&dir), 0o1777);
    for o in objects {
        assert_eq!(owner(&dir.join(o)), (0, 1000), "{o} is not guarded");
        assert!(mount_line(&dir.join(o)).is_none(), "{o} is a mount");
    }
    let again = store.materialize(&open).expect("again: nothing to do");
    assert!(again.changed.is_empty(), "{again:?}");
    // uid 1000 keeps its access through the ACL, and cannot remove the region.
    let out = pod_sh(
        &dir,
        1000,
        "cat /dev/shm/frames | head -c 24; echo; rm -f /dev/shm/frames 2>&1",
    );
    let t = text(&out);
    assert!(t.starts_with("kept across root changes\n"), "{t}");
    assert!(t.contains("Operation not permitted"), "{t}");
    store.materialize(&closed).expect("close it again");
    assert_eq!(mode(&dir), 0o755);
    for o in objects {
        assert_eq!(owner(&dir.join(o)), (1000, 1000), "{o} given back");
    }
    assert_eq!(
        std::fs::read(dir.join("frames")).expect("read")[..24],
        b"kept across root changes"[..]
    );
}
