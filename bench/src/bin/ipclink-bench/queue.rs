//! Queue channels against the kernel's POSIX message queues: one program written against
//! `mq_*` only (testkit/peers/mq_bench.c), run as two "pods" (own mount, IPC and network
//! namespaces) on a link with libipclink_queue.so preloaded, and as two processes in one
//! IPC namespace on the kernel's queues.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ipclink_core::Store;

use super::*;

/// How members wait, as `IPCLINK_QUEUE_SPIN` says it, and how a row names it.
const POLLING: [(&str, &str); 3] = [
    ("1", "as it comes (a few µs of spinning, then sleep)"),
    ("0", "asleep at once (IPCLINK_QUEUE_SPIN=0)"),
    ("busy", "busy-poll (IPCLINK_QUEUE_SPIN=busy)"),
];

/// Throughput and one-way latency (p50, p99; each way of waiting) for 64-byte and 4 KiB
/// messages against the kernel's queues, and busy-poll latency against iceoryx2's
/// publish/subscribe between the same two pods, in turns; each process pinned to one of
/// two cores, root.
pub(super) fn queue(store: &Store, cfg: &Config, rows: &mut Vec<String>) {
    let shim = shim();
    let iox2_bin = super::iceoryx2::binary();
    let peer = ipclink_testkit::compile_peer("mq_bench", ipclink_testkit::Libc::Glibc);
    let taskset = ipclink_testkit::require_tool("taskset");
    let plan = link_of(store, "queue", "  allowCreate: true\n".into());
    let dir = store.link_path(&plan.namespace, &plan.name);
    let name = format!("/ipclink-bench-{}", std::process::id());
    // `taskset -c CPU mq_bench ROLE NAME N SIZE`, in a pod with the shim (waiting as
    // `spin` says) or on the host.
    let start = |pod: Option<&str>, cpu: &str, role: &str, n: &str, size: &str| {
        let args = [
            taskset.display().to_string(),
            "-c".into(),
            cpu.into(),
            peer.display().to_string(),
            role.into(),
            name.clone(),
            n.into(),
            size.into(),
        ];
        if let Some(spin) = pod {
            let mut a = vec![
                format!("LD_PRELOAD={}", shim.display()),
                format!("IPCLINK_QUEUE_SPIN={spin}"),
            ];
            a.extend(args);
            let a: Vec<&str> = a.iter().map(String::as_str).collect();
            ipclink_testkit::spawn_pod(&dir, Path::new("/usr/bin/env"), &a)
        } else {
            Command::new(&args[0])
                .args(&args[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("mq_bench")
        }
    };
    // The waiting side first, then the other; the second's output.
    let pair = |pod: Option<&str>, roles: [&str; 2], n: &str, size: &str| -> Output {
        let waiting = start(pod, "1", roles[0], n, size);
        let out = ipclink_testkit::wait_with_timeout(
            start(pod, "0", roles[1], n, size),
            Duration::from_secs(300),
        );
        let first = ipclink_testkit::wait_with_timeout(waiting, Duration::from_secs(60));
        for o in [&out, &first] {
            assert!(
                o.status.success(),
                "mq_bench: {}",
                ipclink_testkit::describe(o)
            );
        }
        if roles[0] == "sink" { first } else { out }
    };
    let messages = (cfg.round_trips * 25).to_string();
    let trips = (cfg.round_trips / 2).to_string();
    let reps = (cfg.reps * 3 / 2 + 1).max(3);
    let what = "two pods through an ipclink queue vs POSIX mq in one IPC namespace";
    for (size, label) in [("64", "64 B"), ("4096", "4 KiB")] {
        let throughput = |pod| {
            figure(
                &pair(pod, ["sink", "source"], &messages, size),
                "msgs_per_s ",
                "\n",
            )
        };
        // Half the round trip, µs: p50 and p99.
        let one_way = |pod| {
            super::iceoryx2::round_trip(&pair(pod, ["pong", "ping"], &trips, size))
                .map(|ns| ns / 2e3)
        };
        let iceoryx2 = || {
            super::iceoryx2::through_pods(&dir, &taskset, &iox2_bin, &trips, size)
                .map(|ns| ns / 2e3)
        };
        let (tp, latency, against_iceoryx2) = unpinned(|| {
            (
                in_turns(reps, || throughput(Some("1")), || throughput(None)),
                POLLING
                    .map(|(spin, _)| in_turns_each(reps, || one_way(Some(spin)), || one_way(None))),
                in_turns_each(reps, || one_way(Some("busy")), iceoryx2),
            )
        });
        row_in_turns(
            rows,
            &format!("queue, {label} messages, throughput: {what}"),
            "msgs/s",
            tp,
            "≥ 2×",
        );
        for ((_, how), [p50, p99]) in POLLING.iter().zip(latency) {
            for (pct, figures, target) in [("p50", p50, "≤ 1.0×"), ("p99", p99, "reported")] {
                row_in_turns(
                    rows,
                    &format!("queue, {label} messages, one-way latency {pct}, {how}: the same"),
                    "µs",
                    figures,
                    target,
                );
            }
        }
        for (pct, figures, target) in [
            ("p50", against_iceoryx2[0], "≤ 1.0×"),
            ("p99", against_iceoryx2[1], "reported"),
        ] {
            row_in_turns(
                rows,
                &format!(
                    "queue, {label} messages, one-way latency {pct}, busy-poll: two pods through an ipclink queue (mq_*, a copy each way) vs iceoryx2 publish/subscribe between the same pods (half its ping/pong round trip)"
                ),
                "µs",
                figures,
                target,
            );
        }
    }
    store
        .teardown(&plan.namespace, &plan.name)
        .expect("teardown");
}

/// libipclink_queue.so: `$IPCLINK_QUEUE_SO`, or beside this binary.
fn shim() -> PathBuf {
    beside_me(
        "IPCLINK_QUEUE_SO",
        "libipclink_queue.so",
        "cargo build --release -p ipclink-queue-preload",
    )
}
