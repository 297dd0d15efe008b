//! iceoryx2 ping/pong between two "pods" through an allowCreate link, beside two
//! processes on the host's /dev/shm.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ipclink_core::Store;

use super::*;

/// iceoryx2 (a program we did not write) round trips: `ping` and `pong` as two "pods"
/// (own mount, IPC and network namespaces, uid 1000) meeting in a link at /dev/shm that
/// lets members create, beside the same two processes meeting in the host's /dev/shm;
/// each pinned to one of two cores. The data path is iceoryx2's shared memory either way:
/// ipclink should add nothing.
pub(super) fn iceoryx2(store: &Store, cfg: &Config, rows: &mut Vec<String>) {
    let bin = binary();
    let taskset = ipclink_testkit::require_tool("taskset");
    let n = (cfg.round_trips * 10).to_string();
    let plan = link_of(store, "iceoryx2", "  allowCreate: true\n".into());
    let dir = store.link_path(&plan.namespace, &plan.name);
    let host_root = format!("/dev/shm/ipclink-bench-iox2-{}/", std::process::id());
    let before: std::collections::BTreeSet<_> = list("/dev/shm");
    let args = |cpu: &str, role: &str| -> Vec<String> {
        vec![
            "-c".into(),
            cpu.into(),
            bin.display().to_string(),
            role.into(),
            n.clone(),
        ]
    };
    let through_ipclink = || through_pods(&dir, &taskset, &bin, &n, "8")[0] / 1e3;
    let on_the_host = || {
        let run = |cpu, role| {
            Command::new(&taskset)
                .args(args(cpu, role))
                .env("IOX2_ROOT_PATH", &host_root)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("iceoryx2")
        };
        let pong = run("1", "pong");
        let ping = ipclink_testkit::wait_with_timeout(run("0", "ping"), Duration::from_secs(300));
        ipclink_testkit::wait_with_timeout(pong, Duration::from_secs(30));
        round_trip(&ping)[0] / 1e3
    };
    let (a, b) = unpinned(|| side_by_side(cfg.reps.max(3), through_ipclink, on_the_host));
    row(
        rows,
        "iceoryx2 ping/pong round trip p50, two pods through ipclink vs two processes on the host's /dev/shm",
        "µs",
        (a, b),
        "≤ 1.05×",
    );
    // What this run made in the host's /dev/shm: its root path and iceoryx2's segments.
    let _ = std::fs::remove_dir_all(&host_root);
    for name in list("/dev/shm").difference(&before) {
        if name.starts_with("iox2_") {
            let _ = std::fs::remove_file(Path::new("/dev/shm").join(name));
        }
    }
    store
        .teardown(&plan.namespace, &plan.name)
        .expect("teardown");
}

/// The iceoryx2 peer: `$IPCLINK_ICEORYX2`, or beside this binary.
pub(super) fn binary() -> PathBuf {
    beside_me(
        "IPCLINK_ICEORYX2",
        "ipclink-iceoryx2",
        "cargo build --release -p ipclink-iceoryx2-example",
    )
}

/// `n` round trips of `size`-byte samples between `ping` and `pong` as two "pods" (uid
/// 1000) on the link at `dir`, pinned to CPUs 0 and 1: the round trip's p50 and p99, ns.
pub(super) fn through_pods(
    dir: &Path,
    taskset: &Path,
    bin: &Path,
    n: &str,
    size: &str,
) -> [f64; 2] {
    let run = |cpu: &str, role: &str| {
        let bin = bin.display().to_string();
        let a = ["-c", cpu, &bin, role, n, size];
        ipclink_testkit::spawn_pod_as(dir, 1000, 1000, taskset, &a)
    };
    let pong = run("1", "pong");
    let ping = ipclink_testkit::wait_with_timeout(run("0", "ping"), Duration::from_secs(300));
    ipclink_testkit::wait_with_timeout(pong, Duration::from_secs(30));
    round_trip(&ping)
}

/// `rtt_p50_ns X rtt_p99_ns Y` of a ping's output (iceoryx2's, mq_bench's).
pub(super) fn round_trip(out: &std::process::Output) -> [f64; 2] {
    assert!(
        out.status.success(),
        "ping: {}",
        ipclink_testkit::describe(out)
    );
    [
        figure(out, "rtt_p50_ns ", " "),
        figure(out, "rtt_p99_ns ", "\n"),
    ]
}
