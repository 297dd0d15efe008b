//! Hostile members against a running `ipclink-sidecar up` (as root, members as uid 1000
//! in their own namespaces): what they build or name cannot crash it, cannot make it
//! lose what they wrote, and cannot make a declared object theirs.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::{Sidecar, get, setup, write_file};
use ipclink_testkit::{describe, require_tool, spawn_pod_as, wait_with_timeout};

const PYTHON: &str = "/usr/bin/python3";

/// An `allowCreate` link with `sockets` socket channels (each adds inodes a member may
/// use) and one region, as `vision/frames`.
fn open_link(sockets: usize, extra: &str) -> String {
    let mut channels =
        String::from("    - { name: frames, kind: shm, size: 64Ki, mode: \"0666\" }\n");
    for i in 0..sockets {
        channels.push_str(&format!(
            "    - {{ name: s{i}, kind: socket, mode: \"1777\" }}\n"
        ));
    }
    channels.push_str(extra);
    format!(
        "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: {{ name: frames, namespace: vision }}\nspec:\n  sizeLimit: 1Mi\n  allowCreate: true\n  owner: {{ uid: 1000, gid: 1000 }}\n  members: [{{ name: any, podSelector: {{}} }}]\n  channels:\n{channels}"
    )
}

/// Rewrites the link's file to `yaml` and tells the sidecar (SIGHUP).
fn apply(s: &common::Setup, sidecar: &Sidecar, yaml: &str) {
    write_file(s.file.parent().expect("dir"), "link.yaml", yaml);
    sidecar.hup();
}

/// Runs a Python program as a uid-1000 member of the link at `link`; returns its output.
fn member_python(link: &Path, program: &str) -> String {
    require_tool(PYTHON);
    let out = wait_with_timeout(
        spawn_pod_as(link, 1000, 1000, Path::new(PYTHON), &["-c", program]),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{}", describe(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A member's program that builds a chain of directories as deep as the link's inodes
/// allow (or `max`) under `top` (made first), and prints how deep it got.
fn chain(top: &str, max: usize) -> String {
    format!(
        r#"
import os, errno
os.chdir("/dev/shm")
os.mkdir({top:?}); os.chdir({top:?})
depth = 0
while depth < {max}:
    try:
        os.mkdir("d")
    except OSError as e:
        if e.errno != errno.ENOSPC: raise
        break
    os.chdir("d"); depth += 1
print(depth)
"#
    )
}

#[test]
fn a_deep_tree_in_a_removed_socket_channel_and_a_member_named_temporary_do_not_crash_up() {
    let s = setup(&open_link(256, ""));
    let mut sidecar = Sidecar::up(&s.root, &[&s.file], &[]);
    // A name that looks like ipclink's own temporaries, at the root, also deep: the
    // member's own object, which ipclink does not remove.
    member_python(
        &s.link,
        &format!(
            "{}\nopen('leaf', 'w').write('kept')",
            chain(".ipclink-tmp-x", 50)
        ),
    );
    // Under a socket channel about to be removed: as deep as the inodes go (8,181 levels
    // crashed `up` with a stack overflow when removal recursed).
    let depth: usize = member_python(&s.link, &chain("s0/tree", 100_000))
        .trim()
        .parse()
        .expect("depth");
    assert!(depth > 8000, "only {depth} levels");
    // The private directory is closed to members.
    let out = member_python(
        &s.link,
        "import os\ntry:\n    os.mkdir('/dev/shm/.ipclink/x'); print('made')\nexcept PermissionError: print('refused')",
    );
    assert_eq!(out.trim(), "refused");

    apply(&s, &sidecar, &open_link(0, ""));
    sidecar.wait_log("live link changed", 1);
    assert_eq!(get(sidecar.port, "/readyz").0, 200, "{}", sidecar.log());
    assert!(!s.link.join("s0").exists());
    assert!(!s.link.join("s255").exists());
    let leaf = s
        .link
        .join(".ipclink-tmp-x")
        .join(std::iter::repeat_n("d", 50).collect::<Vec<_>>().join("/"))
        .join("leaf");
    assert_eq!(
        std::fs::read_to_string(&leaf).expect("the member's file"),
        "kept"
    );
    let private = s.link.join(".ipclink");
    let st = std::fs::metadata(&private).expect("private dir");
    assert_eq!((st.uid(), st.mode() & 0o7777), (0, 0o700));
    assert_eq!(
        std::fs::read_dir(&private).expect("list").count(),
        0,
        "left aside"
    );
    // And it still serves: one more edit, a new channel made.
    apply(
        &s,
        &sidecar,
        &open_link(0, "    - { name: later, kind: fifo }\n"),
    );
    sidecar.wait_log("live link changed", 2);
    assert!(s.link.join("later").exists(), "{}", sidecar.log());
    assert_eq!(sidecar.stop(), 0);
}

#[test]
fn ten_thousand_levels_in_a_plain_directory_link_are_removed_with_the_channel() {
    let s = setup(&open_link(1, ""));
    let mut sidecar = Sidecar::up(&s.root, &[&s.file], &["--storage", "dir"]);
    let depth: usize = member_python(&s.link, &chain("s0/tree", 10_000))
        .trim()
        .parse()
        .expect("depth");
    assert_eq!(depth, 10_000);
    apply(&s, &sidecar, &open_link(0, ""));
    sidecar.wait_log("live link changed", 1);
    assert!(!s.link.join("s0").exists(), "{}", sidecar.log());
    assert_eq!(get(sidecar.port, "/readyz").0, 200);
    assert_eq!(sidecar.stop(), 0);
}

#[test]
fn a_channel_added_where_a_member_made_an_object_replaces_it_and_never_adopts_it() {
    let s = setup(&open_link(0, ""));
    let mut sidecar = Sidecar::up(&s.root, &[&s.file], &[]);
    // The member makes `secret` (and a directory `room` with its own socket in it),
    // keeps a descriptor open, and waits for the edit.
    let ready = s.link.join("member-ready");
    let go = s.link.join("member-go");
    let program = r#"
import os, socket, time
f = os.open("/dev/shm/secret", os.O_CREAT | os.O_RDWR, 0o644)
os.write(f, b"mine")
os.mkdir("/dev/shm/room", 0o755)
l = socket.socket(socket.AF_UNIX); l.bind("/dev/shm/room/sock"); l.listen()
st = os.fstat(f)
open("/dev/shm/member-ready", "w").write(str(st.st_ino))
deadline = time.time() + 120
while not os.path.exists("/dev/shm/member-go") and time.time() < deadline:
    time.sleep(0.05)
os.pwrite(f, b"written after the edit by uid 1000", 0)
print(os.fstat(f).st_uid, os.fstat(f).st_mode & 0o7777)
"#;
    require_tool(PYTHON);
    let child = ipclink_testkit::KillOnDrop(spawn_pod_as(
        &s.link,
        1000,
        1000,
        Path::new(PYTHON),
        &["-c", program],
    ));
    for _ in 0..400 {
        if std::fs::read_to_string(&ready).is_ok_and(|t| !t.is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let members_inode: u64 = std::fs::read_to_string(&ready)
        .expect("the member is ready")
        .parse()
        .expect("inode");
    apply(
        &s,
        &sidecar,
        &open_link(
            0,
            "    - { name: secret, kind: shm, size: 8Ki, mode: \"0600\" }\n    - { name: room, kind: socket, mode: \"1770\" }\n",
        ),
    );
    sidecar.wait_log("replaced it", 2);
    std::fs::write(&go, "go").expect("go");
    let out = child.output_within(Duration::from_secs(60));
    assert!(out.status.success(), "{}", describe(&out));
    // The member's own file kept its owner and mode (it still held its descriptor).
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1000 420");
    let st = std::fs::metadata(s.link.join("secret")).expect("secret");
    assert_ne!(st.ino(), members_inode, "the member's file was adopted");
    // Root's, with the owner's "rw" for uid 1000 in its ACL: `stat` shows the ACL mask
    // as the group bits, while the group itself has none.
    assert_eq!((st.uid(), st.mode() & 0o7777, st.len()), (0, 0o660, 8192));
    let out = wait_with_timeout(
        spawn_pod_as(
            &s.link,
            1001,
            1000,
            Path::new("/bin/sh"),
            &[
                "-c",
                "cat /dev/shm/secret >/dev/null 2>&1 && echo read || echo refused",
            ],
        ),
        Duration::from_secs(30),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "refused",
        "{}",
        describe(&out)
    );
    let declared = std::fs::read(s.link.join("secret")).expect("read");
    assert!(
        declared.iter().all(|&b| b == 0),
        "the member's bytes are in the declared region"
    );
    let room = s.link.join("room");
    assert_eq!(std::fs::metadata(&room).expect("room").uid(), 0);
    assert!(
        !room.join("sock").exists(),
        "the member's socket is in the declared directory"
    );
    assert_eq!(sidecar.stop(), 0);
}

#[test]
fn a_hard_link_a_member_made_to_a_declared_object_is_not_adopted_as_a_new_channel() {
    let s = setup(&open_link(0, ""));
    let mut sidecar = Sidecar::up(&s.root, &[&s.file], &[]);
    let frames = std::fs::metadata(s.link.join("frames"))
        .expect("frames")
        .ino();
    // A second name for the declared region (the member may: it can read and write it).
    let linked = member_python(
        &s.link,
        "import os\nos.link('/dev/shm/frames', '/dev/shm/later')\nprint(os.stat('/dev/shm/later').st_ino)",
    );
    assert_eq!(linked.trim().parse::<u64>().expect("inode"), frames);
    apply(
        &s,
        &sidecar,
        &open_link(0, "    - { name: later, kind: shm, size: 8Ki }\n"),
    );
    sidecar.wait_log("replaced it", 1);
    let later = std::fs::metadata(s.link.join("later")).expect("later");
    assert_ne!(later.ino(), frames, "the hard link was adopted");
    assert_eq!((later.uid(), later.len()), (0, 8192));
    let kept = std::fs::metadata(s.link.join("frames")).expect("frames");
    assert_eq!(
        (kept.ino(), kept.len()),
        (frames, 64 * 1024),
        "frames changed"
    );
    // Nor can a member mark its own object as ipclink's.
    let forged = member_python(
        &s.link,
        "import os\nopen('/dev/shm/mine', 'w').close()\ntry:\n    os.setxattr('/dev/shm/mine', 'trusted.ipclink.made', b'mine')\n    print('set')\nexcept OSError as e:\n    print(e.errno)",
    );
    assert_eq!(forged.trim(), nix::libc::EPERM.to_string());
    // A removed channel loses its mark: a hard link kept to it and put back at its
    // name before the channel returns is not adopted either.
    member_python(
        &s.link,
        "import os\nos.link('/dev/shm/frames', '/dev/shm/kept')",
    );
    let without = open_link(0, "").replace("{ name: frames, kind: shm", "{ name: other, kind: shm");
    apply(&s, &sidecar, &without);
    let start = std::time::Instant::now();
    while s.link.join("frames").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            sidecar.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    member_python(
        &s.link,
        "import os\nos.link('/dev/shm/kept', '/dev/shm/frames')",
    );
    apply(&s, &sidecar, &open_link(0, ""));
    sidecar.wait_log("replaced it", 2);
    let back = std::fs::metadata(s.link.join("frames")).expect("frames");
    assert_ne!(back.ino(), frames, "the kept hard link was adopted");
    assert_eq!(back.uid(), 0);
    assert_eq!(sidecar.stop(), 0);
}

/// A link made before ipclink kept a private directory: a member that takes the name
/// first does not stop the link's applies; its entry is renamed aside, kept whole.
#[test]
fn a_member_squatting_the_private_directory_name_is_renamed_aside() {
    let s = setup(&open_link(0, ""));
    let mut sidecar = Sidecar::up(&s.root, &[&s.file], &[]);
    // As on a link an older ipclink made: no private directory yet.
    std::fs::remove_dir(s.link.join(".ipclink")).expect("rmdir");
    member_python(
        &s.link,
        "import os\nos.mkdir('/dev/shm/.ipclink', 0o777)\nopen('/dev/shm/.ipclink/mine', 'w').write('kept')",
    );
    apply(
        &s,
        &sidecar,
        &open_link(0, "    - { name: later, kind: fifo }\n"),
    );
    sidecar.wait_log("renamed its entry aside", 1);
    sidecar.wait_log("live link changed", 1);
    let private = std::fs::metadata(s.link.join(".ipclink")).expect("private");
    assert_eq!((private.uid(), private.mode() & 0o7777), (0, 0o700));
    let aside: Vec<_> = std::fs::read_dir(&s.link)
        .expect("ls")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".ipclink-member-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read_to_string(aside[0].path().join("mine")).expect("aside"),
        "kept"
    );
    assert!(s.link.join("later").exists(), "{}", sidecar.log());
    assert_eq!(sidecar.stop(), 0);
}

/// Unauthenticated metrics are served off loopback only when asked for: `up` and the
/// volume plugin refuse a non-loopback --listen (exit 2, naming the flag, nothing made).
#[test]
fn an_unauthenticated_listen_off_loopback_is_refused_unless_asked_for() {
    let s = setup(&open_link(0, ""));
    let port = common::free_port().to_string();
    let any = format!("0.0.0.0:{port}");
    let out = std::process::Command::new(common::BIN)
        .arg("up")
        .arg(&s.file)
        .arg("--root")
        .arg(&s.root)
        .args(["--listen", &any])
        .output()
        .expect("up");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--listen") && err.contains("--insecure-listen"),
        "{err}"
    );
    assert!(!s.root.exists(), "something was made");
    let plugin_dir = tempfile::tempdir().expect("dir");
    let out = std::process::Command::new(common::BIN)
        .arg("volume-plugin")
        .arg("--socket")
        .arg(plugin_dir.path().join("p.sock"))
        .arg("--root")
        .arg(plugin_dir.path().join("root"))
        .args(["--listen", &any])
        .output()
        .expect("volume-plugin");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--insecure-listen"), "{err}");
    assert!(!plugin_dir.path().join("p.sock").exists());
    // Asked for, it serves there.
    let mut child = ipclink_testkit::KillOnDrop(
        std::process::Command::new(common::BIN)
            .arg("up")
            .arg(&s.file)
            .arg("--root")
            .arg(&s.root)
            .args(["--listen", &any, "--insecure-listen"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("up"),
    );
    let port: u16 = port.parse().expect("port");
    let mut ready = false;
    for _ in 0..200 {
        if common::try_get(port, "/readyz").is_some_and(|(code, _)| code == 200) {
            ready = true;
            break;
        }
        assert!(child.0.try_wait().expect("wait").is_none(), "up exited");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ready, "up --insecure-listen never served on {any}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::SIGTERM,
    )
    .expect("SIGTERM");
    assert!(child.0.wait().expect("wait").success());
}
