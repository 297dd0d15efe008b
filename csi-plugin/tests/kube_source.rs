//! The node plugin with the Kubernetes API as its link source, on a real kube-apiserver:
//! membership comes from the IpcLink's podSelectors and the Pods' labels in the API, and
//! a link lives on the one node that claimed it.

mod common;

use common::{Plugin, Unmounter, connect, ephemeral, rt};
use ipclink_csi::csi::node_client::NodeClient;
use ipclink_testkit::control_plane::ControlPlane;
use tonic::Code;

fn pod(name: &str, app: &str) -> String {
    ipclink_testkit::pods::pod(name, app)
        .namespace("vision")
        .on_node("node-1")
        .no_token()
        .container_image("c", "local/ipclink-demo")
        .json()
}

/// A control plane with namespace `vision`, the link `frames` (as made, for making it
/// again) and the member pod `camera-0`.
fn cluster() -> (ControlPlane, ipclink_core::IpcLink) {
    let cp = ControlPlane::start();
    cp.install_ipclink_crd();
    cp.create(
        "/api/v1/namespaces",
        r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"vision"}}"#,
    );
    cp.create(
        "/api/v1/namespaces/vision/serviceaccounts",
        r#"{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"default"}}"#,
    );
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/node-links/frames.yaml"
    ))
    .expect("links");
    let link = ipclink_core::parse_links(
        "frames",
        yaml.split("\n---\n").next().expect("first document"),
    )
    .expect("parse")
    .remove(0);
    cp.create(
        "/apis/ipclink.dev/v1alpha1/namespaces/vision/ipclinks",
        &serde_json::to_string(&link).expect("json"),
    );
    cp.create("/api/v1/namespaces/vision/pods", &pod("camera-0", "camera"));
    (cp, link)
}

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/vision/leases/ipclink-frames";

#[test]
fn membership_comes_from_the_kubernetes_api() {
    let (cp, link) = cluster();
    cp.create("/api/v1/namespaces/vision/pods", &pod("intruder", "other"));

    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let node = Plugin::start_with(
        "node",
        dir.path(),
        &[],
        &[("KUBECONFIG", cp.kubeconfig.as_os_str())],
    );
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&node.socket).await);
        let code = |r: Result<tonic::Response<_>, tonic::Status>| {
            r.map(|_| Code::Ok).unwrap_or_else(|s| s.code())
        };
        let target = dir.path().join("camera");
        assert_eq!(
            code(
                c.node_publish_volume(ephemeral("csi-1", &target, "vision", "camera-0", "frames"))
                    .await
            ),
            Code::Ok,
            "{}",
            node.log()
        );
        assert!(target.join("sem.slots").exists());
        let denied = c
            .node_publish_volume(ephemeral(
                "csi-2",
                &dir.path().join("x"),
                "vision",
                "intruder",
                "frames",
            ))
            .await;
        assert_eq!(code(denied), Code::PermissionDenied);
        let ghost = c
            .node_publish_volume(ephemeral(
                "csi-3",
                &dir.path().join("y"),
                "vision",
                "ghost",
                "frames",
            ))
            .await;
        assert_eq!(
            code(ghost),
            Code::PermissionDenied,
            "a pod the API does not know"
        );
        let missing = c
            .node_publish_volume(ephemeral(
                "csi-4",
                &dir.path().join("z"),
                "vision",
                "camera-0",
                "nope",
            ))
            .await;
        assert_eq!(code(missing), Code::NotFound);
        assert!(
            !dir.path().join("x").exists()
                && !dir.path().join("y").exists()
                && !dir.path().join("z").exists()
        );
        let un = ipclink_csi::csi::NodeUnpublishVolumeRequest {
            volume_id: "csi-1".into(),
            target_path: target.display().to_string(),
        };
        c.node_unpublish_volume(un).await.expect("unpublish");
    });

    // The first publish claimed the link for node-1 (a Lease owned by the IpcLink); the
    // link stays there after its last unpublish, as it still exists.
    let lease_path = LEASE;
    let (code, lease) = cp.get_json(lease_path);
    assert_eq!(code, 200, "{lease:#}");
    assert_eq!(lease["spec"]["holderIdentity"], "node-1", "{lease:#}");
    assert_eq!(lease["metadata"]["ownerReferences"][0]["kind"], "IpcLink");

    // A member on another node is refused, naming both nodes, and nothing is made there.
    const OTHER: &str = "ip-10-0-2-7.ec2.internal";
    cp.add_node("node-1");
    cp.add_node(OTHER);
    cp.create("/api/v1/namespaces/vision/pods", &pod("camera-1", "camera"));
    let other_dir = tempfile::tempdir().expect("temp dir");
    let _unmount_other = Unmounter(other_dir.path().to_path_buf());
    let other = Plugin::start_with(
        "node",
        other_dir.path(),
        &["--node-id", OTHER],
        &[("KUBECONFIG", cp.kubeconfig.as_os_str())],
    );
    let link_copy = other_dir.path().join("node-state/links/vision/frames");
    let target = other_dir.path().join("camera-1");
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&other.socket).await);
        let refused = c
            .node_publish_volume(ephemeral("csi-5", &target, "vision", "camera-1", "frames"))
            .await
            .expect_err("a second node");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        assert!(
            refused
                .message()
                .contains(&format!("lives on node node-1, and this is node {OTHER}")),
            "{refused:?}"
        );
    });
    assert!(!target.exists(), "the target was made");
    assert!(!link_copy.exists(), "a second copy was materialized");
    assert_eq!(
        cp.get_json(lease_path).1["spec"]["holderIdentity"],
        "node-1"
    );

    // The link deleted and made again (a new uid): the old claim is not the new link's,
    // so the other node may take it.
    let links = "/apis/ipclink.dev/v1alpha1/namespaces/vision/ipclinks";
    let (code, text) = cp
        .request("DELETE", &format!("{links}/frames"), None)
        .expect("delete");
    assert_eq!(code, 200, "{text}");
    cp.create(links, &serde_json::to_string(&link).expect("json"));
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&other.socket).await);
        c.node_publish_volume(ephemeral("csi-6", &target, "vision", "camera-1", "frames"))
            .await
            .unwrap_or_else(|s| panic!("{s:?}\n{}", other.log()));
        let un = ipclink_csi::csi::NodeUnpublishVolumeRequest {
            volume_id: "csi-6".into(),
            target_path: target.display().to_string(),
        };
        c.node_unpublish_volume(un).await.expect("unpublish");
    });
    assert!(link_copy.exists(), "{}", other.log());
    assert_eq!(cp.get_json(lease_path).1["spec"]["holderIdentity"], OTHER);

    // Now node-1 is the other node: refused while OTHER exists, and taking the link
    // over (empty) once OTHER's Node is deleted.
    let target = dir.path().join("camera-again");
    let publish = || {
        rt().block_on(async {
            let mut c = NodeClient::new(connect(&node.socket).await);
            c.node_publish_volume(ephemeral("csi-7", &target, "vision", "camera-0", "frames"))
                .await
        })
    };
    let refused = publish().expect_err("OTHER holds the link");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused
            .message()
            .contains(&format!("lives on node {OTHER}")),
        "{refused:?}"
    );
    let (code, text) = cp
        .request("DELETE", &format!("/api/v1/nodes/{OTHER}"), None)
        .expect("delete the node");
    assert_eq!(code, 200, "{text}");
    publish().unwrap_or_else(|s| panic!("{s:?}\n{}", node.log()));
    assert_eq!(
        cp.get_json(lease_path).1["spec"]["holderIdentity"],
        "node-1"
    );
    assert!(node.log().contains("takes the link over"), "{}", node.log());
}

#[test]
fn an_inline_link_unused_past_its_grace_is_freed_for_any_node() {
    let (cp, _) = cluster();
    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let node = Plugin::start_with(
        "node",
        dir.path(),
        &[
            "--unused-link-grace-seconds",
            "1",
            "--gc-interval-seconds",
            "1",
        ],
        &[("KUBECONFIG", cp.kubeconfig.as_os_str())],
    );
    let copy = dir.path().join("node-state/links/vision/frames");
    let target = dir.path().join("camera");
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&node.socket).await);
        c.node_publish_volume(ephemeral("csi-1", &target, "vision", "camera-0", "frames"))
            .await
            .unwrap_or_else(|s| panic!("{s:?}\n{}", node.log()));
    });
    // Mounted, it stays past the grace: only unused time counts.
    std::thread::sleep(std::time::Duration::from_millis(3000));
    assert!(copy.exists(), "{}", node.log());
    assert_eq!(cp.get_json(LEASE).1["spec"]["holderIdentity"], "node-1");
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&node.socket).await);
        let un = ipclink_csi::csi::NodeUnpublishVolumeRequest {
            volume_id: "csi-1".into(),
            target_path: target.display().to_string(),
        };
        c.node_unpublish_volume(un).await.expect("unpublish");
    });
    assert!(copy.exists(), "the last unpublish keeps the link");
    let start = std::time::Instant::now();
    while copy.exists() || cp.get_json(LEASE).0 != 404 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(15),
            "not freed: copy {}, claim {:#}\n{}",
            copy.exists(),
            cp.get_json(LEASE).1,
            node.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(node.log().contains("claim released"), "{}", node.log());
    // The link itself is untouched: it still exists in the API.
    assert_eq!(
        cp.get_json("/apis/ipclink.dev/v1alpha1/namespaces/vision/ipclinks/frames")
            .0,
        200
    );
}

#[test]
fn a_publish_refused_after_the_claim_releases_it_for_another_node() {
    let (cp, _) = cluster();
    const OTHER: &str = "node-2.rack-2.example.com";
    // node-1 takes links of at most 1 MiB: the 8 MiB link is refused there after the
    // claim was taken, when the link is about to be made.
    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let small = Plugin::start_with(
        "node",
        dir.path(),
        &["--max-link-bytes", "1048576"],
        &[("KUBECONFIG", cp.kubeconfig.as_os_str())],
    );
    let target = dir.path().join("camera");
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&small.socket).await);
        let refused = c
            .node_publish_volume(ephemeral("csi-1", &target, "vision", "camera-0", "frames"))
            .await
            .expect_err("over the node's cap");
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert!(
            refused.message().contains("--max-link-bytes"),
            "{refused:?}"
        );
    });
    assert!(!target.exists(), "the target was made");
    assert!(
        !dir.path().join("node-state/links/vision/frames").exists(),
        "the link was made"
    );
    assert_eq!(
        cp.get_json(LEASE).0,
        404,
        "the refusing node kept the claim: {:#}\n{}",
        cp.get_json(LEASE).1,
        small.log()
    );

    // So a node that can hold the link takes it.
    let other_dir = tempfile::tempdir().expect("temp dir");
    let _unmount_other = Unmounter(other_dir.path().to_path_buf());
    let other = Plugin::start_with(
        "node",
        other_dir.path(),
        &["--node-id", OTHER],
        &[("KUBECONFIG", cp.kubeconfig.as_os_str())],
    );
    rt().block_on(async {
        let mut c = NodeClient::new(connect(&other.socket).await);
        c.node_publish_volume(ephemeral(
            "csi-2",
            &other_dir.path().join("camera"),
            "vision",
            "camera-0",
            "frames",
        ))
        .await
        .unwrap_or_else(|s| panic!("{s:?}\n{}", other.log()));
    });
    assert_eq!(cp.get_json(LEASE).1["spec"]["holderIdentity"], OTHER);
    assert!(
        other_dir
            .path()
            .join("node-state/links/vision/frames")
            .exists()
    );
}
