//! The node plugin with the Kubernetes API as its link source, on a real kube-apiserver:
//! membership comes from the IpcLink's podSelectors and the Pods' labels in the API.

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

#[test]
fn membership_comes_from_the_kubernetes_api() {
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
    .expect("parse");
    cp.create(
        "/apis/ipclink.dev/v1alpha1/namespaces/vision/ipclinks",
        &serde_json::to_string(&link[0]).expect("json"),
    );
    cp.create("/api/v1/namespaces/vision/pods", &pod("camera-0", "camera"));
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
}
