//! The node plugin under a real kubelet: kube-apiserver + etcd, kubelet + containerd +
//! runc + CNI bridge. The plugin registers itself (no registrar sidecar), the kubelet
//! mounts inline volumes into real pods in a namespace that enforces the restricted Pod
//! Security profile, and two unchanged POSIX programs in their own pods (own network,
//! IPC and mount namespaces) share shm + semaphores, a FIFO and a path socket through
//! it. Pods that are not members, or of another namespace, are refused (a link with no
//! member podSelector admits no pod; `podSelector: {}` admits the namespace); the link's
//! tmpfs goes when its last publication ends after the link is deleted.

mod common;

use std::time::Duration;

use common::{Plugin, require_root};
use ipclink_testkit::control_plane::ControlPlane;
use ipclink_testkit::mounts::mounts_containing;
use ipclink_testkit::node::{Node, PAUSE_IMAGE, PEER_IMAGE};
use serde_json::json;

const NS: &str = "vision";
const LONG: Duration = Duration::from_secs(90);

/// A restricted member pod on the test node that runs `image` with `args`.
fn pod(name: &str, app: &str, image: &str, args: &[&str], link: &str) -> String {
    ipclink_testkit::pods::pod(name, app)
        .on_node("node-1")
        .runs(image, args)
        .no_token()
        .run_as(1000, Some(1000))
        .restricted()
        .inline_link(link)
        .json()
}

fn failed_mount(cp: &ControlPlane, namespace: &str, pod: &str) -> Option<String> {
    let (_, v) = cp.get_json(&format!(
        "/api/v1/namespaces/{namespace}/events?fieldSelector=involvedObject.name={pod}"
    ));
    v["items"]
        .as_array()?
        .iter()
        .find(|e| {
            e["reason"] == "FailedMount"
                && e["message"].as_str().is_some_and(|m| m.contains("\"ipc\""))
        })
        .and_then(|e| e["message"].as_str().map(str::to_owned))
}

#[test]
fn a_real_kubelet_mounts_links_into_restricted_pods() {
    require_root();
    let cp = ControlPlane::start();
    cp.install_ipclink_crd();
    cp.install_csi_driver();
    for ns in [NS, "elsewhere"] {
        cp.create(
            "/api/v1/namespaces",
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns,
                "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
            .to_string(),
        );
        cp.create(
            &format!("/api/v1/namespaces/{ns}/serviceaccounts"),
            r#"{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"default"}}"#,
        );
    }
    let node = Node::start(&cp, "node-1");

    // The node plugin registers itself with the kubelet through its own socket.
    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = common::Unmounter(dir.path().to_path_buf());
    let (plugin, csinode) = Plugin::start_registered(dir.path(), &cp, &node, &[], LONG);
    assert_eq!(
        csinode["spec"]["drivers"][0],
        json!({"name": "csi.ipclink.dev", "nodeID": "node-1", "topologyKeys": ["topology.ipclink.dev/node"]}),
        "{csinode:#}"
    );
    assert!(
        plugin.log().contains("registered with the kubelet"),
        "{}",
        plugin.log()
    );

    // The link the peer program expects (musl layout: the program is static musl).
    cp.create(
        &format!("/apis/ipclink.dev/v1alpha1/namespaces/{NS}/ipclinks"),
        &json!({
            "apiVersion": "ipclink.dev/v1alpha1", "kind": "IpcLink",
            "metadata": {"name": "frames", "namespace": NS},
            "spec": {
                "sizeLimit": "16Mi",
                "owner": {"uid": 1000, "gid": 1000},
                "members": [
                    {"name": "camera", "podSelector": {"matchLabels": {"app": "camera"}}},
                    {"name": "detector", "podSelector": {"matchLabels": {"app": "detector"}}}
                ],
                "channels": [
                    {"name": "frames", "kind": "shm", "size": "4Mi", "mode": "0660"},
                    {"name": "events", "kind": "fifo", "mode": "0660", "writers": ["camera"], "readers": ["detector"]},
                    {"name": "control", "kind": "socket", "mode": "0770"}
                ],
                "semaphores": [
                    {"name": "frame-ready", "initial": 0, "abi": "musl"},
                    {"name": "slots", "initial": 8, "abi": "musl"}
                ]
            }
        })
        .to_string(),
    );
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    cp.create(
        &pods,
        &pod("detector", "detector", PEER_IMAGE, &["consumer"], "frames"),
    );
    cp.wait_for(&format!("{pods}/detector"), "consumer running", LONG, |v| {
        v["status"]["phase"] == "Running" || v["status"]["phase"] == "Succeeded"
    });
    cp.create(
        &pods,
        &pod("camera", "camera", PEER_IMAGE, &["producer"], "frames"),
    );
    let mut ips = Vec::new();
    for p in ["camera", "detector"] {
        let v = cp.wait_for(&format!("{pods}/{p}"), "pod finished", LONG, |v| {
            matches!(v["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
        });
        assert_eq!(
            v["status"]["phase"],
            "Succeeded",
            "{p}: {v:#}\nlog: {}",
            node.container_log(NS, p, "main")
        );
        ips.push(v["status"]["podIP"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(
        node.container_log(NS, "camera", "main").trim(),
        "producer ok"
    );
    assert!(
        node.container_log(NS, "detector", "main")
            .ends_with("consumer ok")
    );
    assert!(
        ips[0] != ips[1] && !ips[0].is_empty(),
        "each pod has its own network namespace: {ips:?}"
    );

    // A link whose members have no podSelector admits no pod; `podSelector: {}` on a
    // member admits every pod of the namespace.
    for (name, member) in [
        ("closed", json!({"name": "anyone"})),
        ("open", json!({"name": "anyone", "podSelector": {}})),
    ] {
        cp.create(
            &format!("/apis/ipclink.dev/v1alpha1/namespaces/{NS}/ipclinks"),
            &json!({
                "apiVersion": "ipclink.dev/v1alpha1", "kind": "IpcLink",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"sizeLimit": "1Mi", "members": [member],
                    "channels": [{"name": "events", "kind": "fifo"}]}
            })
            .to_string(),
        );
    }
    cp.create(&pods, &pod("guest", "guest", PAUSE_IMAGE, &[], "open"));
    cp.create(&pods, &pod("stranger", "guest", PAUSE_IMAGE, &[], "closed"));

    // Not a member, and a pod of another namespace: refused, nothing mounted.
    cp.create(
        &pods,
        &pod("intruder", "intruder", PAUSE_IMAGE, &[], "frames"),
    );
    cp.create(
        "/api/v1/namespaces/elsewhere/pods",
        &pod("camera", "camera", PAUSE_IMAGE, &[], "frames"),
    );
    let start = std::time::Instant::now();
    let (intruder, other, stranger) = loop {
        match (
            failed_mount(&cp, NS, "intruder"),
            failed_mount(&cp, "elsewhere", "camera"),
            failed_mount(&cp, NS, "stranger"),
        ) {
            (Some(a), Some(b), Some(c)) => break (a, b, c),
            _ => assert!(
                start.elapsed() < LONG,
                "no FailedMount events\n{}",
                node.logs()
            ),
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(
        intruder.contains("PermissionDenied")
            && intruder.contains("frames")
            && intruder.contains("intruder"),
        "{intruder}"
    );
    assert!(
        other.contains("NotFound") && other.contains("elsewhere"),
        "{other}"
    );
    assert!(
        stranger.contains("PermissionDenied")
            && stranger.contains("link vision/closed admits no pod")
            && stranger.contains("podSelector: {}"),
        "{stranger}"
    );
    cp.wait_for(&format!("{pods}/guest"), "guest running", LONG, |v| {
        v["status"]["phase"] == "Running"
    });
    assert!(
        mounts_containing("links/vision/closed").is_empty(),
        "nothing made for a closed link"
    );
    for p in [
        format!("{pods}/stranger"),
        format!("{pods}/intruder"),
        "/api/v1/namespaces/elsewhere/pods/camera".into(),
    ] {
        let (_, v) = cp.get_json(&p);
        assert_eq!(v["status"]["phase"], "Pending", "{v:#}");
        let uid = v["metadata"]["uid"].as_str().expect("uid").to_owned();
        assert!(
            mounts_containing(&uid).iter().all(|m| !m.contains("csi")),
            "mounted for {p}"
        );
    }

    // A member that holds the link; the link is deleted; when the member goes, its
    // unpublish is the last one and the link's tmpfs goes with it.
    cp.create(&pods, &pod("holder", "camera", PAUSE_IMAGE, &[], "frames"));
    cp.wait_for(&format!("{pods}/holder"), "holder running", LONG, |v| {
        v["status"]["phase"] == "Running"
    });
    let link_mount = "links/vision/frames";
    assert_eq!(mounts_containing(link_mount).len(), 1, "the link's tmpfs");
    let (code, text) = cp
        .request(
            "DELETE",
            &format!("/apis/ipclink.dev/v1alpha1/namespaces/{NS}/ipclinks/frames"),
            None,
        )
        .expect("delete link");
    assert_eq!(code, 200, "{text}");
    assert_eq!(
        mounts_containing(link_mount).len(),
        1,
        "kept while a member holds it"
    );
    for p in [
        "holder", "intruder", "camera", "detector", "guest", "stranger",
    ] {
        cp.request("DELETE", &format!("{pods}/{p}"), None)
            .expect("delete pod");
    }
    cp.request("DELETE", "/api/v1/namespaces/elsewhere/pods/camera", None)
        .expect("delete pod");
    cp.wait_for(&format!("{pods}/holder"), "holder gone", LONG, |v| {
        v["code"] == 404
    });
    let start = std::time::Instant::now();
    while !mounts_containing(link_mount).is_empty()
        || !mounts_containing("kubernetes.io~csi").is_empty()
    {
        assert!(
            start.elapsed() < LONG,
            "left mounted: {:?} {:?}\n{}",
            mounts_containing(link_mount),
            mounts_containing("kubernetes.io~csi"),
            plugin.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(plugin);
    drop(node);
}
