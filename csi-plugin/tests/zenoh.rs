//! Zenoh between two restricted pods on a real kubelet (containerd + runc + CNI: each pod
//! has an address of its own), with no TCP between them: `examples/kubernetes/zenoh.yaml`
//! applied as written. The subscriber listens on a Unix socket in the link, the
//! publisher connects to it, and 1,000 samples of 64 KiB arrive in order, every
//! one in shared memory the publisher made in the link.

mod common;

use common::{require_root, run_example_pair};

#[test]
fn zenoh_between_pods_over_a_socket_and_shared_memory_in_the_link() {
    require_root();
    let [slog, plog] = run_example_pair(
        "zenoh",
        &["zenoh"],
        "zenoh.yaml",
        ["zenoh-sub", "zenoh-pub"],
    );
    ipclink_testkit::assert_zenoh_pair_over_the_link(&slog, &plog, 1000);
}
