//! Zenoh between two restricted pods on a real kubelet (containerd + runc + CNI: each pod
//! has an address of its own), with no TCP between them: `examples/kubernetes/zenoh.yaml`
//! applied as written. The subscriber listens on a Unix socket in the link, the
//! publisher connects to it, and 1,000 samples of 64 KiB arrive whole and in order, every
//! one in shared memory the publisher made in the link.

mod common;

use std::time::Duration;

use common::{Plugin, Unmounter, require_root};
use ipclink_testkit::node::cluster;
use ipclink_testkit::{output_text, repo_root};

const NS: &str = "zenoh";
const LONG: Duration = Duration::from_secs(180);

#[test]
fn zenoh_between_pods_over_a_socket_and_shared_memory_in_the_link() {
    require_root();
    let (cp, node) = cluster(NS, &["zenoh"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let (_plugin, _) = Plugin::start_registered(dir.path(), &cp, &node, &[], LONG);

    let out = std::process::Command::new(cp.bin_dir().join("kubectl"))
        .args(["apply", "-f"])
        .arg(repo_root().join("examples/kubernetes/zenoh.yaml"))
        .env("KUBECONFIG", &cp.kubeconfig)
        .output()
        .expect("kubectl");
    assert!(out.status.success(), "kubectl apply: {}", output_text(&out));
    let mut ips = Vec::new();
    for p in ["zenoh-sub", "zenoh-pub"] {
        let v = cp.wait_for(
            &format!("/api/v1/namespaces/{NS}/pods/{p}"),
            "pod finished",
            LONG,
            |v| matches!(v["status"]["phase"].as_str(), Some("Succeeded" | "Failed")),
        );
        assert_eq!(
            v["status"]["phase"],
            "Succeeded",
            "{p}: {v:#}\n{}",
            node.container_log(NS, p, "main")
        );
        ips.push(v["status"]["podIP"].as_str().unwrap_or_default().to_owned());
    }
    assert!(
        !ips[0].is_empty() && ips[0] != ips[1],
        "each pod has an address of its own: {ips:?}"
    );
    let (slog, plog) = (
        node.container_log(NS, "zenoh-sub", "main"),
        node.container_log(NS, "zenoh-pub", "main"),
    );
    // The subscriber listened on the link's socket and nowhere else.
    let listening = slog
        .lines()
        .find_map(|l| l.split("zenoh sub: listening on ").nth(1))
        .unwrap_or_else(|| panic!("{slog}"));
    assert_eq!(
        listening.trim(),
        "unixsock-stream//dev/shm/zenoh.sock",
        "{slog}"
    );
    assert!(
        slog.contains(
            "zenoh sub: 1000 samples of 65536 bytes arrived in order, 1000 in shared memory"
        ),
        "{slog}"
    );
    // Nor did the publisher listen anywhere: it only connected to the socket.
    assert!(plog.contains("zenoh pub: listening on nothing\n"), "{plog}");
    assert!(
        plog.contains(
            "zenoh pub: 1000 samples of 65536 bytes sent (shared memory), the subscriber acknowledged 1000"
        ),
        "{plog}"
    );
}
