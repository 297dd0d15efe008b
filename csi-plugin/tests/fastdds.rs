//! Fast-DDS between two restricted pods on a real kubelet (containerd + runc + CNI: each
//! pod has an address of its own), over shared memory only, through an `allowCreate`
//! link at /dev/shm: `examples/kubernetes/fastdds.yaml` applied as written but for
//! `FASTDDS_WAIT_FOR`, with the shared-memory-only profile and the preload library of
//! docs/fastdds.md. 1,000 samples arrive in order, both pods' participants have the same
//! host id, and while the two hold on, the node plugin's /metrics show Fast-DDS's own
//! objects (the discovery port's segment, each participant's segment) as discovered
//! objects mapped by both pods.

mod common;

use common::{Hold, require_root, run_example_pair};
use ipclink_testkit::assert_fastdds_pair_matched;

#[test]
fn fastdds_between_pods_over_shared_memory_only() {
    require_root();
    let ready = |m: &str| {
        ipclink_testkit::fastdds_objects_held(m, "dds", "pod", "fastdds/dds-pub", "fastdds/dds-sub")
    };
    let [plog, slog] = run_example_pair(
        "fastdds",
        &["fastdds"],
        "fastdds.yaml",
        ["dds-pub", "dds-sub"],
        Some(Hold {
            variable: "FASTDDS_WAIT_FOR",
            ready: &ready,
        }),
    );
    assert_fastdds_pair_matched(&plog, &slog, "the pods");
}
