//! A running `ipclink-sidecar up` as root: live depths, probes that disturb nothing,
//! re-runs that keep data, `--strict` conflicts that change nothing, limits, shutdown.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, LINK, Sidecar, get, metric, setup, write_file};
use ipclink_testkit::http::promtool_check;
use ipclink_testkit::mounts::{mount_line, mounts_containing, snapshot};
use ipclink_testkit::{KillOnDrop, Libc, compile_peer, require_root, spawn_pod};

#[test]
fn a_writer_blocked_in_open_stays_blocked_while_metrics_are_scraped() {
    let s = setup(LINK);
    let sidecar = Sidecar::up(&s.root, &[&s.file], &[]);
    let fifo = s.link.join("events");
    // A shell blocks in open(O_WRONLY) for its redirection until a reader comes.
    let mut writer = KillOnDrop(
        Command::new("sh")
            .arg("-c")
            .arg(r#"echo payload > "$1"; echo opened"#)
            .arg("sh")
            .arg(&fifo)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("writer"),
    );
    let writer = &mut writer.0;
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..25 {
        let (code, body) = get(sidecar.port, "/metrics");
        assert_eq!(code, 200);
        let labels = [("channel", "events")];
        assert_eq!(
            metric(&body, "ipclink_fifo_reader_present", &labels),
            Some(0.0),
            "{body}"
        );
        assert_eq!(
            metric(&body, "ipclink_channel_queue_bytes", &labels),
            Some(0.0)
        );
        assert!(
            writer.try_wait().expect("try_wait").is_none(),
            "the writer was released by a scrape"
        );
    }
    let wchan = std::fs::read_to_string(format!("/proc/{}/wchan", writer.id())).unwrap_or_default();
    assert_eq!(
        wchan, "wait_for_partner",
        "the writer should wait in the fifo open"
    );
    // Now a real reader: the writer goes through and the data arrives intact.
    let mut reader = File::open(&fifo).expect("reader");
    let mut got = String::new();
    reader.read_to_string(&mut got).expect("read");
    assert_eq!(got, "payload\n");
    writer.wait().expect("writer exits");
    let mut said = String::new();
    writer
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut said)
        .expect("read");
    assert_eq!(said, "opened\n");
}

#[test]
fn fifo_depth_is_reported_and_the_reader_still_gets_every_byte_and_eof() {
    let s = setup(LINK);
    let sidecar = Sidecar::up(&s.root, &[&s.file], &[]);
    let fifo = s.link.join("events");
    let mut reader = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(&fifo)
        .expect("reader");
    let mut writer = OpenOptions::new().write(true).open(&fifo).expect("writer");
    writer.write_all(&[7u8; 1000]).expect("write");
    let (_, body) = get(sidecar.port, "/metrics");
    let labels = [("channel", "events"), ("kind", "fifo")];
    assert_eq!(
        metric(&body, "ipclink_channel_queue_bytes", &labels),
        Some(1000.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "ipclink_channel_capacity_bytes", &labels),
        Some(65536.0)
    );
    assert_eq!(
        metric(&body, "ipclink_fifo_reader_present", &labels),
        Some(1.0)
    );
    drop(writer);
    get(sidecar.port, "/metrics");
    let mut got = Vec::new();
    reader.read_to_end(&mut got).expect("read to EOF");
    assert_eq!(got, vec![7u8; 1000]);
}

#[test]
fn socket_backlog_semaphores_and_shm_are_reported() {
    let s = setup(LINK);
    let sidecar = Sidecar::up(&s.root, &[&s.file], &[]);
    let sock = s.link.join("control/server.sock");
    let _listener = UnixListener::bind(&sock).expect("bind");
    let _clients: Vec<UnixStream> = (0..3)
        .map(|_| UnixStream::connect(&sock).expect("connect"))
        .collect();
    let (_, body) = get(sidecar.port, "/metrics");
    let control = [("channel", "control"), ("kind", "socket")];
    assert_eq!(
        metric(&body, "ipclink_socket_backlog_connections", &control),
        Some(3.0),
        "{body}"
    );
    assert_eq!(
        metric(
            &body,
            "ipclink_semaphore_value",
            &[("channel", "frame-ready")]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(&body, "ipclink_semaphore_value", &[("channel", "slots")]),
        Some(8.0)
    );
    assert_eq!(
        metric(&body, "ipclink_semaphore_waiters", &[("channel", "slots")]),
        Some(0.0)
    );
    assert_eq!(
        metric(&body, "ipclink_shm_size_bytes", &[("channel", "frames")]),
        Some(1048576.0)
    );
    assert_eq!(
        metric(
            &body,
            "ipclink_shm_resident_bytes",
            &[("channel", "frames")]
        ),
        Some(1048576.0)
    );
    assert_eq!(
        metric(&body, "ipclink_link_limit_bytes", &[("link", "frames")]),
        Some(2097152.0)
    );
    let used = metric(&body, "ipclink_link_used_bytes", &[("link", "frames")]).expect("used");
    assert!(used >= 1048576.0 + 8192.0, "used {used}");

    let (code, json) = get(sidecar.port, "/v1/links");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    let link = &v["links"][0];
    assert_eq!(link["namespace"], "vision");
    assert_eq!(link["sizeLimitEnforced"], true);
    assert_eq!(link["channels"][2]["backlogConnections"], 3);
    assert_eq!(link["channels"][2]["sockets"], 1);
    assert_eq!(link["semaphores"][0]["value"], 3);
    assert_eq!(link["semaphores"][1]["abi"], "musl");
    assert_eq!(link["channels"][0]["mode"], "0640");

    // The metrics text is what Prometheus' own checker accepts.
    promtool_check(&body);
}

/// A listener bound from another network namespace (a pod's) is seen there: its real
/// backlog, not the 0 of a namespace where it is invisible.
#[test]
fn a_listener_bound_in_another_network_namespace_reports_its_backlog() {
    let s = setup(LINK);
    let sidecar = Sidecar::up(&s.root, &[&s.file], &[]);
    let ready = s.link.join("control/ready");
    let program = r#"
import os, socket, time
l = socket.socket(socket.AF_UNIX)
l.bind("/dev/shm/control/server.sock")
l.listen(16)
open("/dev/shm/control/ready", "w").write("1")
while not os.path.exists("/dev/shm/control/stop"):
    time.sleep(0.05)
"#;
    let pod = KillOnDrop(spawn_pod(
        &s.link,
        Path::new("/usr/bin/python3"),
        &["-c", program],
    ));
    for _ in 0..400 {
        if ready.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ready.exists(), "the pod's listener never came up");
    let _clients: Vec<UnixStream> = (0..3)
        .map(|_| UnixStream::connect(s.link.join("control/server.sock")).expect("connect"))
        .collect();
    let (_, body) = get(sidecar.port, "/metrics");
    let control = [("channel", "control"), ("kind", "socket")];
    assert_eq!(
        metric(&body, "ipclink_socket_backlog_connections", &control),
        Some(3.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, "ipclink_channel_observed", &control),
        Some(1.0)
    );
    std::fs::write(s.link.join("control/stop"), "1").expect("stop");
    drop(pod);
}

/// Runs `args` as uid `uid`, gid 2000 and no other group; whether it succeeded.
fn as_member(uid: u32, args: &[&str]) -> bool {
    Command::new("setpriv")
        .args([
            "--reuid",
            &uid.to_string(),
            "--regid",
            "2000",
            "--clear-groups",
            "--",
        ])
        .args(args)
        .stderr(Stdio::null())
        .status()
        .expect("setpriv")
        .success()
}

#[test]
fn a_socket_directory_is_sticky_so_a_member_removes_only_its_own_entries() {
    require_root();
    let link = |mode: &str| {
        format!(
            "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: {{ name: frames, namespace: vision }}\nspec:\n  owner: {{ uid: 0, gid: 2000 }}\n  channels:\n    - {{ name: control, kind: socket{mode} }}\n"
        )
    };
    // Declared 0770 (the default before it became sticky): one member can remove what
    // another bound.
    let s = setup(&link(r#", mode: "0770""#));
    let mut sidecar = Sidecar::up(&s.root, &[&s.file], &["--keep"]);
    let entry = s.link.join("control/camera.sock");
    let path = entry.to_str().expect("utf-8");
    assert!(as_member(1001, &["touch", path]));
    assert!(
        as_member(1002, &["rm", "-f", path]),
        "not sticky: anyone removes it"
    );
    assert!(!entry.exists());
    assert!(as_member(1001, &["touch", path]));
    assert_eq!(sidecar.stop(), 0);

    // The same link, now with the default mode: made sticky live, nothing lost.
    std::fs::write(&s.file, link("")).expect("rewrite");
    let _sidecar = Sidecar::up(&s.root, &[&s.file], &[]);
    let mode = std::fs::metadata(s.link.join("control"))
        .expect("control")
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o1770);
    assert!(entry.exists(), "the member's entry survived the change");
    assert!(
        !as_member(1002, &["rm", "-f", path]),
        "another member removed it"
    );
    assert!(entry.exists());
    assert!(as_member(1001, &["rm", "-f", path]), "its owner removes it");
    assert!(!entry.exists());
}

#[test]
fn objects_have_declared_modes_and_the_tmpfs_its_limits() {
    let s = setup(LINK);
    let _sidecar = Sidecar::up(&s.root, &[&s.file], &[]);
    let mode = |p: &str| {
        std::fs::symlink_metadata(s.link.join(p))
            .expect(p)
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("frames"), 0o640);
    assert_eq!(mode("events"), 0o660);
    assert_eq!(
        mode("control"),
        0o1770,
        "socket directories are sticky by default"
    );
    assert_eq!(mode("sem.frame-ready"), 0o660);
    assert_eq!(mode("slots"), 0o660);
    let line = mount_line(&s.link).expect("the link is a mount point");
    for opt in ["nosuid", "nodev", "noexec", "size=2048k", "nr_inodes=1050"] {
        assert!(line.contains(opt), "{opt} missing: {line}");
    }
}

#[test]
fn a_full_tmpfs_gives_the_writer_enospc_and_the_sidecar_stays_healthy() {
    let s = setup(LINK);
    let sidecar = Sidecar::up(&s.root, &[&s.file], &[]);
    // Bytes: 2Mi limit, 1Mi + 2 pages used; a member filling its socket directory hits ENOSPC.
    let mut f = File::create(s.link.join("control/fill")).expect("create");
    let chunk = vec![1u8; 64 * 1024];
    let err = (0..64)
        .find_map(|_| f.write_all(&chunk).err())
        .expect("ENOSPC before 4Mi");
    assert_eq!(err.raw_os_error(), Some(nix::libc::ENOSPC), "{err}");
    drop(f);
    std::fs::remove_file(s.link.join("control/fill")).expect("rm");
    // Inodes: nr_inodes is 2 per object + 1024 + 16 per socket channel; the root,
    // the private directory and the 5 objects hold some, and (Linux 6.6 and later) the
    // marks ipclink keeps on the objects one more: members get the 1024 + 16 whole.
    let err = (0..2000)
        .find_map(|i| File::create(s.link.join(format!("control/f{i}"))).err())
        .expect("inode limit before 2000 files");
    let made = std::fs::read_dir(s.link.join("control"))
        .expect("ls")
        .count();
    assert!(
        (1024 + 16..=1050 - 5 - 2).contains(&made),
        "{made} files made"
    );
    assert_eq!(err.raw_os_error(), Some(nix::libc::ENOSPC), "{err}");
    let (code, body) = get(sidecar.port, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(
        metric(
            &body,
            "ipclink_semaphore_value",
            &[("channel", "frame-ready")]
        ),
        Some(3.0)
    );
    assert_eq!(get(sidecar.port, "/healthz").0, 200);
}

#[test]
fn rerun_keeps_data_and_strict_refuses_a_changed_spec() {
    let s = setup(LINK);
    let mut first = Sidecar::up(&s.root, &[&s.file], &["--keep"]);
    // A member writes a frame and posts a semaphore.
    std::fs::OpenOptions::new()
        .write(true)
        .open(s.link.join("frames"))
        .and_then(|mut f| f.write_all(b"frame-1"))
        .expect("write frame");
    let mut sem = std::fs::read(s.link.join("sem.frame-ready")).expect("sem");
    sem[0] = 4;
    std::fs::write(s.link.join("sem.frame-ready"), &sem).expect("post");
    assert_eq!(first.stop(), 0);
    assert!(s.link.join("frames").exists(), "--keep left the link");

    // Same spec again: nothing recreated, nothing truncated, nothing reset.
    let again = Sidecar::up(&s.root, &[&s.file], &["--keep"]);
    let mut head = [0u8; 7];
    File::open(s.link.join("frames"))
        .and_then(|mut f| f.read_exact(&mut head))
        .expect("read");
    assert_eq!(&head, b"frame-1");
    let (_, body) = get(again.port, "/metrics");
    assert_eq!(
        metric(
            &body,
            "ipclink_semaphore_value",
            &[("channel", "frame-ready")]
        ),
        Some(4.0)
    );
    assert!(again.log().contains("kept=5"), "{}", again.log());
    drop(again);

    // With --strict, a changed mode, size, limit or kind: exit 2 naming each field, and
    // nothing changes (without it they are applied live or wait: see edits.rs).
    let before = snapshot(&s.link);
    for (from, to, field) in [
        (r#"mode: "0640""#, r#"mode: "0600""#, "spec.channels[0]"),
        ("size: 1Mi", "size: 512Ki", "spec.channels[0]"),
        ("sizeLimit: 2Mi", "sizeLimit: 4Mi", "spec.sizeLimit"),
        ("kind: fifo", "kind: socket", "spec.channels[1]"),
    ] {
        let changed = write_file(
            s.file.parent().expect("dir"),
            "changed.yaml",
            &LINK.replace(from, to),
        );
        let out = Command::new(BIN)
            .arg("up")
            .arg(&changed)
            .arg("--root")
            .arg(&s.root)
            .arg("--strict")
            .args(["--listen", &format!("127.0.0.1:{}", common::free_port())])
            .output()
            .expect("up");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{to}: {err}");
        assert!(err.contains(field), "{to}: {err}");
        assert_eq!(snapshot(&s.link), before, "{to} changed the link");
    }

    // status works offline on the kept link.
    let out = Command::new(BIN)
        .arg("status")
        .arg("--root")
        .arg(&s.root)
        .output()
        .expect("status");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("LINK") && table.contains("vision/frames"),
        "{table}"
    );
    assert!(table.contains("   value 4   "), "{table}");
    for column in ["DEPTH", "CAPACITY", "READERS", "WRITERS", "HOLDERS"] {
        assert!(table.contains(column), "{table}");
    }
    assert!(table.contains("semaphore/musl"), "{table}");

    // A final run without --keep tears everything down on SIGTERM.
    let mut last = Sidecar::up(&s.root, &[&s.file], &[]);
    assert_eq!(last.stop(), 0);
    assert!(
        !s.root.join("vision").exists(),
        "teardown left {:?}",
        std::fs::read_dir(&s.root).map(|d| d.count())
    );
}

#[test]
fn a_symlink_planted_at_the_link_path_is_refused_and_not_followed() {
    let s = setup(LINK);
    let outside = tempfile::tempdir().expect("outside");
    std::fs::write(outside.path().join("precious"), b"x").expect("write");
    std::fs::create_dir_all(s.root.join("vision")).expect("mkdir");
    std::os::unix::fs::symlink(outside.path(), &s.link).expect("symlink");
    let out = Command::new(BIN)
        .arg("up")
        .arg(&s.file)
        .arg("--root")
        .arg(&s.root)
        .args(["--listen", &format!("127.0.0.1:{}", common::free_port())])
        .output()
        .expect("up");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("symlinks are never followed"), "{err}");
    let names: Vec<_> = std::fs::read_dir(outside.path())
        .expect("ls")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("precious")]);
    assert!(
        mounts_containing(outside.path().to_str().expect("utf-8")).is_empty(),
        "mounted through the symlink"
    );
}

#[test]
fn teardown_of_a_plain_directory_link_never_follows_symlinks() {
    let s = setup(LINK);
    let outside = tempfile::tempdir().expect("outside");
    std::fs::write(outside.path().join("precious"), b"x").expect("write");
    let mut sidecar = Sidecar::up(&s.root, &[&s.file], &["--storage", "dir"]);
    let (_, json) = get(sidecar.port, "/v1/links");
    assert!(json.contains("\"sizeLimitEnforced\":false"), "{json}");
    assert!(sidecar.log().contains("NOT enforced"), "{}", sidecar.log());
    // `status` (which does not know how `up` made the link) sees it too.
    let out = Command::new(BIN)
        .arg("status")
        .arg("--json")
        .arg("--root")
        .arg(&s.root)
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"sizeLimitEnforced\": false"), "{text}");
    // A member leaves a symlink to elsewhere in its socket directory.
    std::os::unix::fs::symlink(outside.path(), s.link.join("control/escape")).expect("symlink");
    assert_eq!(sidecar.stop(), 0);
    assert!(!s.link.exists(), "teardown left the link");
    assert!(
        outside.path().join("precious").exists(),
        "teardown followed a symlink"
    );
}

#[test]
fn without_root_up_uses_a_plain_directory_under_xdg_runtime_dir_and_says_so() {
    require_root(); // to become an unprivileged user with setpriv
    let dir = tempfile::tempdir().expect("temp dir");
    let user = nix::unistd::Uid::from_raw(1000);
    let group = nix::unistd::Gid::from_raw(1000);
    let own = |p: &Path| nix::unistd::chown(p, Some(user), Some(group)).expect("chown");
    own(dir.path());
    let file = write_file(dir.path(), "link.yaml", LINK);
    own(&file);
    let xdg = dir.path().join("xdg");
    std::fs::create_dir(&xdg).expect("mkdir");
    own(&xdg);
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=1000", "--regid=1000", "--clear-groups", BIN, "up"])
        .arg(&file)
        .env("XDG_RUNTIME_DIR", &xdg);
    let mut sidecar = Sidecar::start(cmd, &xdg.join("ipclink"));
    let link = xdg.join("ipclink/vision/frames");
    let fifo = std::fs::symlink_metadata(link.join("events"))
        .expect("the fifo under $XDG_RUNTIME_DIR/ipclink");
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fifo.file_type()));
    assert_eq!(fifo.uid(), 1000, "objects belong to the user");
    let log = sidecar.log();
    assert!(log.contains("sizeLimit is NOT enforced"), "{log}");
    assert!(
        log.contains("owners from the spec are not applied"),
        "{log}"
    );
    let (_, json) = get(sidecar.port, "/v1/links");
    assert!(json.contains("\"sizeLimitEnforced\":false"), "{json}");
    assert!(
        mounts_containing(link.to_str().expect("utf-8")).is_empty(),
        "an unprivileged up mounted something"
    );
    assert_eq!(sidecar.stop(), 0);
    assert!(!link.exists(), "teardown left the link");
}

const CREATE_LINK: &str = r#"
apiVersion: ipclink.dev/v1alpha1
kind: IpcLink
metadata: { name: frames, namespace: vision }
spec:
  sizeLimit: 8Mi
  allowCreate: true
  channels:
    - { name: events, kind: fifo }
  semaphores:
    - { name: slots, initial: 8 }
"#;

/// What members create in a link is probed like what it declares, with `origin`
/// telling them apart, at most 1,000 per link; the rest is counted. The tmpfs limit
/// still holds and the sidecar stays healthy.
#[test]
fn objects_members_create_are_probed_and_capped() {
    let s = setup(CREATE_LINK);
    let sidecar = Sidecar::up(&s.root, &[&s.file], &[]);
    let link = &s.link;
    // Two semaphores made by the C libraries' own sem_open(O_CREAT), in a "pod".
    for (libc, name, value) in [(Libc::Glibc, "/gsem", "5"), (Libc::Musl, "/msem", "6")] {
        let maker = compile_peer("sem_make", libc);
        let out = ipclink_testkit::wait_with_timeout(
            spawn_pod(link, &maker, &[name, value]),
            Duration::from_secs(10),
        );
        assert!(out.status.success(), "{}", ipclink_testkit::describe(&out));
    }
    std::fs::create_dir_all(link.join("iceoryx2/segments")).expect("mkdir");
    std::fs::write(link.join("iceoryx2/segments/seg1"), vec![1u8; 1 << 20]).expect("region");
    nix::unistd::mkfifo(
        &link.join("chan"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .expect("mkfifo");
    let _reader = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(link.join("chan"))
        .expect("reader");
    OpenOptions::new()
        .write(true)
        .open(link.join("chan"))
        .and_then(|mut w| w.write_all(b"hello\n"))
        .expect("write");
    let _listener = UnixListener::bind(link.join("sock")).expect("bind");
    let _clients: Vec<UnixStream> = (0..2)
        .map(|_| UnixStream::connect(link.join("sock")).expect("connect"))
        .collect();

    let (_, body) = get(sidecar.port, "/metrics");
    let found = |family: &str, channel: &str| {
        metric(
            &body,
            family,
            &[("channel", channel), ("origin", "discovered")],
        )
    };
    assert_eq!(
        found("ipclink_semaphore_value", "gsem"),
        Some(5.0),
        "{body}"
    );
    assert_eq!(
        found("ipclink_semaphore_value", "msem"),
        Some(6.0),
        "{body}"
    );
    assert_eq!(
        found("ipclink_shm_size_bytes", "iceoryx2/segments/seg1"),
        Some(1048576.0),
        "{body}"
    );
    assert_eq!(
        found("ipclink_shm_resident_bytes", "iceoryx2/segments/seg1"),
        Some(1048576.0)
    );
    assert_eq!(
        found("ipclink_channel_queue_bytes", "chan"),
        Some(6.0),
        "{body}"
    );
    assert_eq!(
        found("ipclink_socket_backlog_connections", "sock"),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &body,
            "ipclink_semaphore_value",
            &[("channel", "slots"), ("origin", "declared")]
        ),
        Some(8.0)
    );
    assert_eq!(
        metric(
            &body,
            "ipclink_link_unreported_objects",
            &[("link", "frames")]
        ),
        Some(0.0)
    );
    promtool_check(&body);

    // 5 objects so far; 996 more make 1,001: those past the link's budget (bytes of
    // /metrics and /v1/links, at most 1,000 objects) are counted, not reported.
    for i in 0..996 {
        std::fs::write(link.join(format!("f{i:04}")), b"x").expect("file");
    }
    let (_, body) = get(sidecar.port, "/metrics");
    let reported = body
        .lines()
        .filter(|l| {
            l.starts_with("ipclink_channel_present{") && l.contains(r#"origin="discovered""#)
        })
        .count();
    let unreported = metric(
        &body,
        "ipclink_link_unreported_objects",
        &[("link", "frames")],
    )
    .expect("unreported");
    assert_eq!(reported + unreported as usize, 1001, "{body}");
    assert!((50..1000).contains(&reported), "{reported} reported");
    let share: usize = body
        .lines()
        .filter(|l| l.contains(r#"link="frames""#))
        .map(|l| l.len() + 1)
        .sum();
    assert!(
        share <= 128 << 10,
        "the link takes {share} bytes of /metrics"
    );
    promtool_check(&body);
    let (_, json) = get(sidecar.port, "/v1/links");
    assert!(json.len() <= 64 << 10, "/v1/links is {} bytes", json.len());
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    // A walk of its own too: what it lists and what it counts add up.
    let listed = json.matches(r#""discovered":true"#).count() as u64;
    let counted = v["links"][0]["unreportedObjects"].as_u64().unwrap_or(0);
    assert!(counted > 0, "{json}");
    assert_eq!(listed + counted, 1001, "{json}");
    let status = Command::new(BIN)
        .args(["status", "--root"])
        .arg(&s.root)
        .output()
        .expect("status");
    let table = String::from_utf8_lossy(&status.stdout);
    // Its own walk, with its own view of holders (a report's byte budget counts their
    // labels, and a loaded machine may leave some unknown): what it lists and what it
    // says it leaves out add up to every object members made.
    let left_out: u64 = table
        .lines()
        .find_map(|l| {
            let (n, rest) = l.strip_prefix("vision/frames: ")?.split_once(' ')?;
            rest.starts_with("more objects members created are not listed")
                .then(|| n.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no line saying what is not listed:\n{table}"));
    let listed = table.lines().filter(|l| l.contains(" discovered ")).count() as u64;
    assert!(left_out > 0, "{table}");
    assert_eq!(listed + left_out, 1001, "{table}");
    // Reported in name order: the FIFO `chan` comes before the files.
    assert!(
        table
            .lines()
            .any(|l| l.contains("chan") && l.contains("fifo") && l.contains("discovered")),
        "{table}"
    );

    // The tmpfs still holds: a member filling it gets ENOSPC and the sidecar answers.
    let full = std::fs::write(link.join("big"), vec![0u8; 16 << 20]).expect_err("ENOSPC");
    assert_eq!(full.raw_os_error(), Some(nix::libc::ENOSPC));
    assert_eq!(get(sidecar.port, "/readyz").0, 200);
    assert_eq!(get(sidecar.port, "/metrics").0, 200);
}
