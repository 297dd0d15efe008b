//! Fast-DDS (Debian's 2.9, through the examples/fastdds pair) between two "pods" through
//! an allowCreate link, beside the same pair with the host's IPC and network namespaces
//! (what `hostIPC: true` + `hostNetwork: true` give pods today).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ipclink_core::Store;

use super::*;

/// The pair's samples: the largest the example's type holds, for throughput; 1 KiB for
/// round trips.
const THROUGHPUT_BYTES: &str = "60000";
const ROUND_TRIP_BYTES: &str = "1024";

/// Throughput (publisher → subscriber, reliable, keep-all) and ping/pong round trips of
/// the examples/fastdds pair, both processes as uid 1000 with the shared-memory-only
/// profile and each pinned to one of two cores: as two pods (own mount, IPC and network
/// namespaces, loopback only, so one host id) meeting in a link at /dev/shm, and as two
/// processes on the host's /dev/shm and network. The data path is Fast-DDS's shared
/// memory either way: ipclink should add nothing.
pub(super) fn fastdds(store: &Store, cfg: &Config, rows: &mut Vec<String>) {
    let pair = pair_dir().join("fastdds_pair");
    assert!(pair.is_file(), "{}: no Fast-DDS pair", pair.display());
    let taskset = ipclink_testkit::require_tool("taskset");
    let setpriv = ipclink_testkit::require_tool("setpriv");
    // Readable by uid 1000 on both sides.
    let mut profile = tempfile::Builder::new()
        .prefix("ipclink-bench-fastdds")
        .suffix(".xml")
        .tempfile()
        .expect("profile");
    profile
        .write_all(include_bytes!("../../../../examples/fastdds/shm-only.xml"))
        .expect("profile");
    std::fs::set_permissions(
        profile.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .expect("profile mode");
    let plan = link_of(store, "fastdds", "  allowCreate: true\n".into());
    let dir = store.link_path(&plan.namespace, &plan.name);
    let before = list("/dev/shm");
    let samples = (cfg.round_trips / 2).to_string();
    let trips = (cfg.round_trips / 4).to_string();
    // `env VARIABLES taskset -c CPU fastdds_pair ROLE`: what both sides run as uid 1000.
    let argv = |cpu: &str, role: &str, n: &str, bytes: &str| -> Vec<String> {
        [
            "env".to_owned(),
            format!(
                "FASTRTPS_DEFAULT_PROFILES_FILE={}",
                profile.path().display()
            ),
            format!("FASTDDS_SAMPLES={n}"),
            format!("FASTDDS_BYTES={bytes}"),
            "FASTDDS_TIMEOUT_S=300".to_owned(),
            taskset.display().to_string(),
            "-c".to_owned(),
            cpu.to_owned(),
            pair.display().to_string(),
            role.to_owned(),
        ]
        .into()
    };
    // The pair (`first` started first: it waits for the second) in pods or on the host;
    // the second's output.
    let run = |in_pods: bool, first: [&str; 3], second: [&str; 3]| -> (Output, Output) {
        let start = |cpu: &str, [role, n, bytes]: [&str; 3]| {
            let a = argv(cpu, role, n, bytes);
            if in_pods {
                let a: Vec<&str> = a[1..].iter().map(String::as_str).collect();
                ipclink_testkit::spawn_pod_as(&dir, 1000, 1000, Path::new("/usr/bin/env"), &a)
            } else {
                Command::new(&setpriv)
                    .args(["--reuid=1000", "--regid=1000", "--clear-groups"])
                    .args(&a)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("fastdds_pair")
            }
        };
        let waiting = start("1", first);
        let second =
            ipclink_testkit::wait_with_timeout(start("0", second), Duration::from_secs(330));
        let first = ipclink_testkit::wait_with_timeout(waiting, Duration::from_secs(60));
        for out in [&first, &second] {
            assert!(
                out.status.success(),
                "fastdds_pair: {}",
                ipclink_testkit::describe(out)
            );
        }
        (first, second)
    };
    let throughput = |in_pods: bool| {
        let (sub, _) = run(
            in_pods,
            ["sub", &samples, THROUGHPUT_BYTES],
            ["pub", &samples, THROUGHPUT_BYTES],
        );
        figure(&sub, "(", " MB/s)")
    };
    let round_trip = |in_pods: bool| {
        let (_, ping) = run(
            in_pods,
            ["pong", &trips, ROUND_TRIP_BYTES],
            ["ping", &trips, ROUND_TRIP_BYTES],
        );
        figure(&ping, "rtt_p50_ns ", " ") / 1e3
    };
    // Two runs of 7 turns differed by 3% here, more than the two sides do.
    let reps = (cfg.reps * 3 / 2 + 1).max(3);
    let (tp, rtt) = unpinned(|| {
        (
            in_turns(reps, || throughput(true), || throughput(false)),
            in_turns(reps, || round_trip(true), || round_trip(false)),
        )
    });
    row_in_turns(
        rows,
        "Fast-DDS 60 kB samples, publisher to subscriber, two pods through ipclink vs hostIPC + hostNetwork",
        "MB/s",
        tp,
        "≥ 0.95×",
    );
    row_in_turns(
        rows,
        "Fast-DDS 1 KiB ping/pong round trip p50, two pods through ipclink vs hostIPC + hostNetwork",
        "µs",
        rtt,
        "≤ 1.05×",
    );
    // What the host side left in the host's /dev/shm: Fast-DDS's segments, port
    // segments, lock files and semaphores, all named after it.
    for name in list("/dev/shm").difference(&before) {
        if name.starts_with("fastrtps_") || name.starts_with("sem.fastrtps_") {
            let _ = std::fs::remove_file(Path::new("/dev/shm").join(name));
        }
    }
    store
        .teardown(&plan.namespace, &plan.name)
        .expect("teardown");
}

/// The directory holding the pair: `$IPCLINK_FASTDDS`, or what scripts/build-fastdds
/// builds (and caches).
fn pair_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("IPCLINK_FASTDDS") {
        return PathBuf::from(d);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-fastdds");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(out.status.success(), "{} failed", script.display());
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}
