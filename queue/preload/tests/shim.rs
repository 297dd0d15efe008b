//! Unchanged `mq_*` programs (`examples/queue/mq_peer.c`, glibc) in two "pods" (mount,
//! IPC and network namespaces of their own, uid 1000, a link at /dev/shm that lets
//! members create) with `LD_PRELOAD=libipclink_queue.so`: the receiver creates the
//! queue with its `mq_attr`, the sender finds it, and 100,000 messages with three
//! priorities arrive, each priority in the order sent. Without the shim the same
//! program finds no queue (its IPC namespace's kernel queues are its own). And the POSIX
//! errors, each by its errno.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ipclink_testkit::{describe, spawn_pod_as, wait_with_timeout};

/// libipclink_queue.so, built beside this test in `deps/` (cargo builds the package's
/// library, both its kinds, for its tests).
fn shim() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let so = exe
        .parent()
        .expect("deps directory")
        .join("libipclink_queue.so");
    assert!(so.is_file(), "{}: not built", so.display());
    so
}

/// A link directory as `allowCreate` makes it: sticky, open to every member.
fn link() -> tempfile::TempDir {
    let dir = tempfile::tempdir_in("/dev/shm").expect("temp dir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .expect("chmod");
    dir
}

/// `examples/queue/mq_peer.c`, compiled once with Debian's gcc into the tests' scratch
/// directory (outside any link, readable by uid 1000).
fn mq_peer() -> &'static Path {
    static PEER: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PEER.get_or_init(|| {
        ipclink_testkit::require_tool("gcc");
        let program =
            ipclink_testkit::scratch_dir().join(format!("mq_peer-{}", std::process::id()));
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/queue/mq_peer.c");
        let cc = std::process::Command::new("gcc")
            .args(["-O2", "-Wall", "-Werror", "-o"])
            .arg(&program)
            .arg(&src)
            .output()
            .expect("gcc");
        assert!(cc.status.success(), "{}", describe(&cc));
        program
    })
}

/// `mq_peer ARGS` in a pod of `dir` as uid 1000, with the shim preloaded or not.
fn pod(dir: &Path, preload: bool, args: &[&str]) -> std::process::Child {
    let peer = mq_peer();
    let mut a: Vec<String> = Vec::new();
    if preload {
        a.push(format!("LD_PRELOAD={}", shim().display()));
    }
    a.push(peer.display().to_string());
    a.extend(args.iter().map(|s| s.to_string()));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    spawn_pod_as(dir, 1000, 1000, Path::new("/usr/bin/env"), &a)
}

#[test]
fn unchanged_mq_programs_in_two_pods_exchange_100000_messages_through_the_shim() {
    ipclink_testkit::require_root();
    let dir = link();
    let receiver = pod(dir.path(), true, &["recv", "/jobs", "100000"]);
    let sender = pod(dir.path(), true, &["send", "/jobs", "100000"]);
    let sent = wait_with_timeout(sender, Duration::from_secs(120));
    let got = wait_with_timeout(receiver, Duration::from_secs(120));
    assert!(sent.status.success(), "{}", describe(&sent));
    assert!(got.status.success(), "{}", describe(&got));
    let text = String::from_utf8_lossy(&got.stdout);
    assert!(text.contains("maxmsg 64 msgsize 64\n"), "{text}");
    assert!(
        text.contains("received 100000, in order within each priority"),
        "{text}"
    );
    assert_eq!(String::from_utf8_lossy(&sent.stdout), "sent 100000\n");
    // The queue is a file of the link, the receiver's.
    let meta = std::fs::metadata(dir.path().join("mq.jobs")).expect("mq.jobs");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 1000);

    // The same program without the shim: its own IPC namespace has no such queue.
    let out = wait_with_timeout(
        pod(dir.path(), false, &["open", "/jobs"]),
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ENOENT\n");
}

#[test]
fn the_shim_answers_posix_errors_with_their_errno() {
    ipclink_testkit::require_root();
    let dir = link();
    let out = wait_with_timeout(
        pod(dir.path(), true, &["errors", "/errs"]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "ok O_EXCL on an existing queue EEXIST",
        "ok a message over msgsize EMSGSIZE",
        "ok a receive buffer under msgsize EMSGSIZE",
        "ok a timed receive on an empty queue ETIMEDOUT",
        "ok a non-blocking receive on an empty queue EAGAIN",
        "ok a non-blocking send to a full queue EAGAIN",
        "ok the higher priority first",
        "ok a closed descriptor EBADF",
        "ok opening an unlinked queue ENOENT",
    ] {
        assert!(text.contains(line), "{line}:\n{text}");
    }
    assert!(!dir.path().join("mq.errs").exists(), "mq_unlink removed it");
}

/// The library's own C ABI (`include/ipclink_queue.h`), from a C program linked against
/// it (`testkit/peers/queue_abi.c`).
#[test]
fn the_c_abi_sends_receives_and_answers_negative_errnos() {
    ipclink_testkit::require_tool("gcc");
    let dir = tempfile::tempdir().expect("temp dir");
    let queue = dir.path().join("mq.jobs");
    queue::create(
        &queue,
        queue::Params {
            capacity: 4,
            message_size: 32,
        },
        0o600,
    )
    .expect("create");
    let so = shim();
    let lib_dir = so.parent().expect("its directory");
    let program = dir.path().join("queue_abi");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testkit/peers/queue_abi.c");
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("include");
    let cc = std::process::Command::new("gcc")
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&program)
        .arg(&src)
        .arg("-I")
        .arg(&include)
        .arg("-L")
        .arg(lib_dir)
        .arg("-lipclink_queue")
        .output()
        .expect("gcc");
    assert!(cc.status.success(), "{}", describe(&cc));
    let out = std::process::Command::new(&program)
        .arg(&queue)
        .env("LD_LIBRARY_PATH", lib_dir)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "ok attrs 4 32 2",
        "ok first high 9",
        "ok second low 1",
        "ok empty EAGAIN",
        "ok timeout ETIMEDOUT",
        "ok small buffer EMSGSIZE",
        "ok priority EINVAL",
        "ok closed EBADF",
        "ok missing ENOENT",
    ] {
        assert!(text.contains(line), "{line}:\n{text}");
    }
}

/// examples/queue/queue.py: Python's standard library only (ctypes over the C ABI), as
/// two "pods" (uid 1000) on one declared queue: 3,000 messages in three priorities
/// arrive, each priority in the order sent, and an empty queue answers EAGAIN; a queue
/// that does not exist is FileNotFoundError, and leaves nothing behind.
#[test]
fn a_python_program_uses_a_queue_through_ctypes() {
    ipclink_testkit::require_root();
    // Debian's, which uid 1000 can run (a python3 earlier on root's PATH may not be).
    let python = Path::new("/usr/bin/python3");
    assert!(python.is_file(), "no /usr/bin/python3 (Debian's python3)");
    let dir = link();
    queue::create(
        &dir.path().join("mq.jobs"),
        queue::Params {
            capacity: 8,
            message_size: 32,
        },
        0o666,
    )
    .expect("create");
    // Both members may send and receive (the umask took some of the mode).
    std::fs::set_permissions(
        dir.path().join("mq.jobs"),
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .expect("chmod");
    // The script where uid 1000 can read it.
    let script = ipclink_testkit::scratch_dir().join(format!("queue-{}.py", std::process::id()));
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/queue/queue.py"),
        &script,
    )
    .expect("copy the example");
    let run = |args: &[&str]| {
        let lib = format!("IPCLINK_QUEUE_LIB={}", shim().display());
        let mut a = vec![lib.as_str(), python.to_str().expect("utf-8")];
        a.push(script.to_str().expect("utf-8"));
        a.extend_from_slice(args);
        spawn_pod_as(dir.path(), 1000, 1000, Path::new("/usr/bin/env"), &a)
    };
    let receiver = run(&["recv", "/dev/shm/mq.jobs", "3000"]);
    let sent = wait_with_timeout(
        run(&["send", "/dev/shm/mq.jobs", "3000"]),
        Duration::from_secs(120),
    );
    let got = wait_with_timeout(receiver, Duration::from_secs(120));
    assert!(sent.status.success(), "{}", describe(&sent));
    assert!(got.status.success(), "{}", describe(&got));
    assert_eq!(
        String::from_utf8_lossy(&got.stdout),
        "queue.py: capacity 8 message size 32\n\
         queue.py: received 3000, in order within each priority; then: Resource temporarily unavailable\n"
    );
    let out = wait_with_timeout(
        run(&["recv", "/dev/shm/mq.nope", "1"]),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("FileNotFoundError: [Errno 2] open /dev/shm/mq.nope"),
        "{}",
        describe(&out)
    );
    assert!(!dir.path().join("mq.nope").exists());
    let _ = std::fs::remove_file(&script);
}
