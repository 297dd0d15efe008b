//! A receiver and a sender in pid, mount and IPC namespaces of their own, as two
//! different uids (what two pods are to each other): the receiver blocks on the empty
//! queue and the send wakes it (a futex on the file's page, not on a pid or an address).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipclink_queue::{Params, create, stats};

const BIN: &str = env!("CARGO_BIN_EXE_ipclink-queue");

/// `BIN ARGS` as `uid` in new pid, mount and IPC namespaces.
fn pod(uid: u32, args: &[&str]) -> Command {
    let mut c = Command::new("unshare");
    c.args(["--pid", "--fork", "--mount", "--ipc", "--", "setpriv"])
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .args(["--clear-groups", BIN])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

#[test]
fn a_receiver_in_another_pid_namespace_is_woken_by_a_send() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this test makes namespaces and changes uids: run it as root"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let path = dir.path().join("mq.jobs");
    create(
        &path,
        Params {
            capacity: 4,
            message_size: 64,
        },
        0o600,
    )
    .expect("create");
    // Both uids read and write it, as a channel's mode would let them.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .expect("chmod");
    let p = path.to_str().expect("utf-8");
    let receiver = pod(2000, &["recv", p, "60000"]).spawn().expect("receiver");
    let start = Instant::now();
    let observe = || stats::read(&std::fs::File::open(&path).expect("open")).expect("stats");
    while observe().receivers_waiting == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the receiver never waited"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let sent = pod(1000, &["send", p, "7", "across namespaces"])
        .output()
        .expect("sender");
    assert!(sent.status.success(), "{sent:?}");
    let got = receiver.wait_with_output().expect("receiver");
    assert!(got.status.success(), "{got:?}");
    assert_eq!(
        String::from_utf8_lossy(&got.stdout),
        "across namespaces (priority 7)\n"
    );
    let s = observe();
    let members = stats::members(&std::fs::File::open(&path).expect("open"));
    assert_eq!((s.sent, s.received, s.waiting, members), (1, 1, 0, 0));
}
