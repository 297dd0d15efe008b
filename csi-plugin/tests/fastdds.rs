//! Fast-DDS between two restricted pods on a real kubelet (containerd + runc + CNI: each
//! pod has an address of its own), over shared memory only, through an `allowCreate`
//! link at /dev/shm: `examples/kubernetes/fastdds.yaml` applied as written, with the
//! shared-memory-only profile and the preload library of docs/fastdds.md. 1,000 samples
//! arrive in order, and both pods' participants have the same host id.

mod common;

use common::{require_root, run_example_pair};
use ipclink_testkit::assert_fastdds_pair_matched;

#[test]
fn fastdds_between_pods_over_shared_memory_only() {
    require_root();
    let [plog, slog] = run_example_pair(
        "fastdds",
        &["fastdds"],
        "fastdds.yaml",
        ["dds-pub", "dds-sub"],
    );
    assert_fastdds_pair_matched(&plog, &slog, "the pods");
}
