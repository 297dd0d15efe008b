//! csi-sanity (kubernetes-csi/csi-test v5, built by scripts/install-csi-sanity) against the
//! real node and controller binaries. Skips are only those csi-sanity makes for
//! capabilities the driver does not advertise. The node is named by the longest name a
//! Kubernetes Node may have: a 253-character FQDN.

mod common;

use std::process::Command;

use common::{Plugin, connect, require_root, rt, sanity_dir};
use ipclink_core::model::names::{TOPOLOGY_KEY, topology_value};
use ipclink_csi::csi::NodeGetInfoRequest;
use ipclink_csi::csi::node_client::NodeClient;

#[test]
fn csi_sanity_passes() {
    require_root();
    let sanity = ipclink_testkit::script_path("install-csi-sanity");

    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = common::Unmounter(dir.path().to_path_buf());
    let links = sanity_dir().join("links");
    let fqdn = format!(
        "{}.{}.compute.internal",
        "ip-10-0-1-23",
        vec!["n".repeat(63); 3].join(".")
    );
    let fqdn = format!("{}{fqdn}", "x".repeat(253 - fqdn.len()));
    assert_eq!(fqdn.len(), 253);
    // csi-sanity names no pod: its link has no member podSelector, so it is opened
    // explicitly (without the flag, as in a cluster, it would admit no one).
    let node = Plugin::start(
        "node",
        dir.path(),
        &links,
        &["--node-id", &fqdn, "--open-selectorless-links"],
    );
    let controller = Plugin::start("controller", dir.path(), &links, &[]);
    let out = Command::new(&sanity)
        .arg(format!("--csi.endpoint=unix://{}", node.socket.display()))
        .arg(format!(
            "--csi.controllerendpoint=unix://{}",
            controller.socket.display()
        ))
        .arg(format!(
            "--csi.testvolumeparameters={}",
            sanity_dir().join("params.yaml").display()
        ))
        .arg("--csi.testvolumesize=1048576")
        .arg(format!(
            "--csi.mountdir={}",
            dir.path().join("mnt").display()
        ))
        .arg(format!(
            "--csi.stagingdir={}",
            dir.path().join("stage").display()
        ))
        .arg("--ginkgo.no-color")
        .output()
        .expect("run csi-sanity");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "csi-sanity failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("| 0 Failed |"), "{text}");
    let passed: u32 = text
        .split(" Passed")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        passed >= 32,
        "fewer csi-sanity specs ran than before ({passed}):\n{text}"
    );
    // The node id is the whole name (CSI allows 256 bytes); the topology value, which the
    // kubelet copies into a Node label (at most 63 characters), is its short form.
    let info = rt().block_on(async {
        NodeClient::new(connect(&node.socket).await)
            .node_get_info(NodeGetInfoRequest {})
            .await
            .expect("NodeGetInfo")
            .into_inner()
    });
    assert_eq!(info.node_id, fqdn);
    let segment = &info.accessible_topology.expect("topology").segments[TOPOLOGY_KEY];
    assert_eq!(segment.len(), 63, "{segment}");
    assert_eq!(*segment, topology_value(&fqdn));
    assert!(fqdn.starts_with(&segment[..46]), "{segment}");
}
