//! Fast-DDS between two restricted pods on a real kubelet (containerd + runc + CNI: each
//! pod has an address of its own), over shared memory only, through an `allowCreate`
//! link at /dev/shm: `examples/kubernetes/fastdds.yaml` applied as written, with the
//! shared-memory-only profile and the preload library of docs/fastdds.md. 1,000 samples
//! arrive in order, and both pods' participants have the same host id.

mod common;

use std::time::Duration;

use common::{Plugin, Unmounter, require_root};
use ipclink_testkit::node::cluster;
use ipclink_testkit::{fastdds_host_id, output_text, repo_root};

const NS: &str = "fastdds";
const LONG: Duration = Duration::from_secs(180);

#[test]
fn fastdds_between_pods_over_shared_memory_only() {
    require_root();
    let (cp, node) = cluster(NS, &["fastdds"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let (_plugin, _) = Plugin::start_registered(dir.path(), &cp, &node, &[], LONG);

    let out = std::process::Command::new(cp.bin_dir().join("kubectl"))
        .args(["apply", "-f"])
        .arg(repo_root().join("examples/kubernetes/fastdds.yaml"))
        .env("KUBECONFIG", &cp.kubeconfig)
        .output()
        .expect("kubectl");
    assert!(out.status.success(), "kubectl apply: {}", output_text(&out));
    let mut ips = Vec::new();
    for p in ["dds-pub", "dds-sub"] {
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
    let (plog, slog) = (
        node.container_log(NS, "dds-pub", "main"),
        node.container_log(NS, "dds-sub", "main"),
    );
    assert!(
        slog.contains("fastdds sub: 1000 samples arrived in order"),
        "{slog}"
    );
    assert!(
        plog.contains("fastdds pub: 1000 samples sent and acknowledged"),
        "{plog}"
    );
    assert_eq!(fastdds_host_id(&plog, "pub"), fastdds_host_id(&slog, "sub"));
}
