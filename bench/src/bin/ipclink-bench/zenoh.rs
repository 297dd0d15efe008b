//! Zenoh (the examples/zenoh pair) between two "pods" whose network namespaces are joined
//! by a veth pair, as a CNI plugin joins pods: a Unix socket and shared memory in a link
//! against TCP between the two.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ipclink_core::Store;

use super::*;

/// Samples of 64 KiB, as in the Compose bench and the tests.
const SIZE: &str = "65536";
/// The subscriber's address on the veth pair.
const SUB_ADDRESS: &str = "10.213.7.1";

/// Throughput of examples/zenoh's `sub` ← `pub` (each pinned to one of two cores, uid
/// 1000; the static build scripts/build-images makes for the image, or `$IPCLINK_ZENOH`)
/// in the same two pods, taken in turns: over `unixsock-stream//dev/shm/zenoh.sock` with payloads in
/// shared memory the publisher makes in the link (4 MiB pool, the example's), and over
/// TCP across the veth pair with shared memory off.
pub(super) fn zenoh(store: &Store, cfg: &Config, rows: &mut Vec<String>) {
    let bin = std::env::var_os("IPCLINK_ZENOH")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(
                &std::env::var("IPCLINK_CACHE").unwrap_or_else(|_| "/var/cache/ipclink".into()),
            )
            .join(format!(
                "target-images/{}-unknown-linux-gnu/release/ipclink-zenoh",
                std::env::consts::ARCH
            ))
        });
    assert!(
        bin.is_file(),
        "{}: no ipclink-zenoh; build it (scripts/build-images) or set IPCLINK_ZENOH",
        bin.display()
    );
    let taskset = ipclink_testkit::require_tool("taskset");
    let net = Veth::new();
    let plan = link_of(store, "zenoh", "  allowCreate: true\n".into());
    let dir = store.link_path(&plan.namespace, &plan.name);
    let samples = (cfg.round_trips * 2).to_string();
    let turn = |tcp: bool| -> f64 {
        // Where the subscriber listens and the publisher connects.
        let endpoint = if tcp {
            format!("tcp/{SUB_ADDRESS}:7447")
        } else {
            "unixsock-stream//dev/shm/zenoh.sock".to_owned()
        };
        let start = |netns: &str, cpu: &str, role: &str| {
            let side = if role == "sub" {
                "ZENOH_LISTEN"
            } else {
                "ZENOH_CONNECT"
            };
            let a = [
                format!("{side}={endpoint}"),
                format!("ZENOH_SHM={}", if tcp { "off" } else { "on" }),
                format!("ZENOH_SAMPLES={samples}"),
                format!("ZENOH_SIZE={SIZE}"),
                "ZENOH_TIMEOUT_S=300".to_owned(),
                taskset.display().to_string(),
                "-c".to_owned(),
                cpu.to_owned(),
                bin.display().to_string(),
                role.to_owned(),
            ];
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            ipclink_testkit::spawn_pod_in(netns, &dir, 1000, 1000, Path::new("/usr/bin/env"), &a)
        };
        // Zenoh once negotiated no shared memory for a whole turn in a CI run (every
        // sample came over the socket), and not in dozens of turns since: such a turn
        // is taken again, at most twice, and said on stderr, rather than measured as if
        // it were the link's.
        for attempt in 1..=3 {
            // What the last turn left in the link (its socket, segments) goes first.
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name == "zenoh.sock" || name.ends_with(".zenoh") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
            let sub = start(&net.names[0], "1", "sub");
            let publisher = start(&net.names[1], "0", "pub");
            let sub = ipclink_testkit::wait_with_timeout(sub, Duration::from_secs(330));
            let publisher = ipclink_testkit::wait_with_timeout(publisher, Duration::from_secs(30));
            let no_shm = !tcp
                && attempt < 3
                && String::from_utf8_lossy(&sub.stdout).contains(", only 0 in shared memory");
            if no_shm {
                eprintln!("zenoh: no sample came in shared memory in this turn; taking it again");
                continue;
            }
            for out in [&sub, &publisher] {
                assert!(
                    out.status.success(),
                    "ipclink-zenoh: {}",
                    ipclink_testkit::describe(out)
                );
            }
            return seconds_to_rate(&sub, &samples, tcp);
        }
        unreachable!("the third attempt returns or fails")
    };
    let figures = unpinned(|| in_turns(cfg.reps.max(3), || turn(false), || turn(true)));
    row_in_turns(
        rows,
        "Zenoh 64 KiB samples, publisher to subscriber, two pods: a socket and shared memory in ipclink (4 MiB pool) vs TCP between the pods",
        "GB/s",
        figures,
        "report",
    );
    store
        .teardown(&plan.namespace, &plan.name)
        .expect("teardown");
}

/// Bytes a second from the subscriber's line, after checking that every sample came in
/// shared memory (none over TCP).
fn seconds_to_rate(out: &Output, samples: &str, tcp: bool) -> f64 {
    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!(
        "{samples} samples of {SIZE} bytes arrived in order, {} in shared memory, in ",
        if tcp { "0" } else { samples }
    );
    let secs: f64 = text
        .split(&want)
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no line with {want:?} in {text}"));
    samples.parse::<f64>().unwrap_or(0.0) * SIZE.parse::<f64>().unwrap_or(0.0) / secs / 1e9
}

/// Two named network namespaces joined by a veth pair (the first at SUB_ADDRESS), removed
/// on drop.
struct Veth {
    names: [String; 2],
}

impl Veth {
    fn new() -> Veth {
        let pid = std::process::id();
        let names = [
            format!("ipclink-bench-{pid}-a"),
            format!("ipclink-bench-{pid}-b"),
        ];
        let net = Veth { names };
        let [a, b] = &net.names;
        let (va, vb) = (format!("ibz{pid}a"), format!("ibz{pid}b"));
        for args in [
            vec!["netns", "add", a],
            vec!["netns", "add", b],
            vec!["link", "add", &va, "type", "veth", "peer", "name", &vb],
            vec!["link", "set", &va, "netns", a],
            vec!["link", "set", &vb, "netns", b],
            vec![
                "-n",
                a,
                "addr",
                "add",
                &format!("{SUB_ADDRESS}/30"),
                "dev",
                &va,
            ],
            vec!["-n", b, "addr", "add", "10.213.7.2/30", "dev", &vb],
            vec!["-n", a, "link", "set", "lo", "up"],
            vec!["-n", b, "link", "set", "lo", "up"],
            vec!["-n", a, "link", "set", &va, "up"],
            vec!["-n", b, "link", "set", &vb, "up"],
        ] {
            let out = Command::new("ip").args(&args).output().expect("ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                ipclink_testkit::describe(&out)
            );
        }
        net
    }
}

impl Drop for Veth {
    /// Deleting a namespace deletes the veth end in it, and so the pair.
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "delete", name]).output();
        }
    }
}
