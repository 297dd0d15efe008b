//! Zenoh between two restricted pods on a real kubelet (containerd + runc + CNI: each pod
//! has an address of its own), with no TCP between them: `examples/kubernetes/zenoh.yaml`
//! applied as written, but for `ZENOH_WAIT_FOR`. The subscriber listens on a Unix socket
//! in the link, the publisher connects to it, and 1,000 samples of 64 KiB arrive in
//! order, every one in shared memory the publisher made in the link. While the two hold
//! on, the node plugin's /metrics show Zenoh's socket and segments as discovered objects
//! with the two pods as their holders.

mod common;

use common::{Hold, require_root, run_example_pair};

#[test]
fn zenoh_between_pods_over_a_socket_and_shared_memory_in_the_link() {
    require_root();
    let ready = |m: &str| {
        ipclink_testkit::zenoh_objects_held(m, "zenoh", "pod", "zenoh/zenoh-sub", "zenoh/zenoh-pub")
    };
    let [slog, plog] = run_example_pair(
        "zenoh",
        &["zenoh"],
        "zenoh.yaml",
        ["zenoh-sub", "zenoh-pub"],
        Some(Hold {
            variable: "ZENOH_WAIT_FOR",
            ready: &ready,
        }),
    );
    ipclink_testkit::assert_zenoh_pair_over_the_link(&slog, &plog, 1000);
}
