//! A Triton-style exchange between two restricted pods on a real kubelet:
//! `examples/kubernetes/triton-style.yaml` applied as written. The client creates a
//! region with Python's `multiprocessing.shared_memory`, the server attaches by name
//! (unregistering it from Python's resource tracker, as docs/link-resource.md says),
//! reads it and closes it, and the client still finds its region. That the server's exit
//! would unlink it without the unregister is `sidecar/tests/python.rs`'s to show.

mod common;

use common::{require_root, run_example_pair};

#[test]
fn a_server_attaches_to_the_clients_region_and_leaves_it_in_place() {
    require_root();
    let [clog, slog] = run_example_pair(
        "triton",
        &["python"],
        "triton-style.yaml",
        ["client", "server"],
        None,
    );
    assert!(
        slog.contains("server: read hello from the client's region"),
        "{slog}"
    );
    assert!(
        clog.contains("client: region still there after the server read it and let go"),
        "{clog}"
    );
}
