//! A queue channel between two restricted pods on a real kubelet (containerd + runc + CNI:
//! each pod has its own IPC namespace): `examples/kubernetes/queue.yaml` applied as
//! written. Two unchanged programs written against POSIX `mq_*` (examples/queue) use the
//! link's declared queue `jobs` as "/jobs" through `LD_PRELOAD=libipclink_queue.so`:
//! the receiver opens it (its attributes are the declared ones) and 100,000 messages in
//! three priorities arrive, each priority in the order sent.

mod common;

use common::{require_root, run_example_pair};

#[test]
fn unchanged_mq_programs_in_two_pods_share_the_links_queue() {
    require_root();
    let [rlog, slog] = run_example_pair(
        "queue",
        &["queue"],
        "queue.yaml",
        ["mq-recv", "mq-send"],
        None,
    );
    assert!(rlog.contains("maxmsg 64 msgsize 64\n"), "{rlog}");
    assert!(
        rlog.contains("received 100000, in order within each priority"),
        "{rlog}"
    );
    assert!(slog.contains("sent 100000"), "{slog}");
}
