//! Persistent mode on a real control plane (kube-apiserver, kube-scheduler,
//! kube-controller-manager): the link's claim on a WaitForFirstConsumer class is bound to
//! a volume the operator provisions on the node the scheduler picked for the first
//! member, and the second member follows it there.

mod common;

use common::*;
use ipclink_core::names::topology_value;
use ipclink_testkit::control_plane::ControlPlane;
use serde_json::json;

const NS: &str = "vision";

#[test]
fn the_first_member_picks_the_node_and_the_rest_follow() {
    let mut cp = ControlPlane::start();
    cp.start_scheduling();
    cp.install_ipclink_crd();
    cp.namespace(NS);
    // Node names as clouds give them: FQDNs, up to the longest a Node may have (253
    // characters), whose first 46 characters are the same. Our topology label holds each
    // name's short form; the volume's node affinity must use the same.
    let fqdn = |zone: &str| {
        let tail = format!(
            "{}.{zone}.compute.internal",
            vec!["n".repeat(63); 3].join(".")
        );
        format!("ip-10-0-1-23-{}.{tail}", "x".repeat(239 - tail.len()))
    };
    let nodes = [fqdn("us-west-2a"), fqdn("us-west-2b"), fqdn("us-west-2c")];
    assert_eq!(nodes[0].len(), 253, "{}", nodes[0]);
    for n in &nodes {
        cp.add_node(n);
    }
    cp.create(
        "/apis/storage.k8s.io/v1/storageclasses",
        &json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "ipclink"},
            "provisioner": "csi.ipclink.dev",
            "volumeBindingMode": "WaitForFirstConsumer",
            "reclaimPolicy": "Delete",
        })
        .to_string(),
    );
    let _op = Operator::start(OPERATOR, &cp, &[], &[]);
    let spec = json!({
        "sizeLimit": "8Mi",
        "claim": {},
        "members": [
            {"name": "camera", "podSelector": {"matchLabels": {"app": "camera"}}},
            {"name": "detector", "podSelector": {"matchLabels": {"app": "detector"}}}
        ],
        "channels": [{"name": "events", "kind": "fifo", "mode": "0666"}]
    });
    cp.create(&links_path(NS), &link(NS, "frames", spec));
    let claim_path = format!("/api/v1/namespaces/{NS}/persistentvolumeclaims/frames");
    let claim = cp.wait_for(&claim_path, "the link's claim", CONVERGE, |v| {
        v["kind"] == "PersistentVolumeClaim"
    });
    assert_eq!(claim["spec"]["storageClassName"], "ipclink", "{claim:#}");
    assert_eq!(
        claim["spec"]["resources"]["requests"]["storage"], "8Mi",
        "{claim:#}"
    );
    assert_eq!(
        claim["metadata"]["ownerReferences"][0]["kind"], "IpcLink",
        "{claim:#}"
    );
    assert_eq!(
        claim["metadata"]["ownerReferences"][0]["controller"], true,
        "{claim:#}"
    );
    assert_eq!(
        claim["status"]["phase"], "Pending",
        "WaitForFirstConsumer binds late: {claim:#}"
    );

    // The first member is placed by the scheduler, not by us.
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    cp.create(
        &pods,
        &pod("cam-0", "camera", "frames", None, 1000, None, true),
    );
    let cam = cp.wait_for(
        &format!("{pods}/cam-0"),
        "cam-0 scheduled",
        std::time::Duration::from_secs(90),
        |v| v["spec"]["nodeName"].is_string(),
    );
    let node = cam["spec"]["nodeName"].as_str().expect("node").to_owned();
    let claim = cp.wait_for(&claim_path, "claim bound", CONVERGE, |v| {
        v["status"]["phase"] == "Bound"
    });
    assert_eq!(
        claim["metadata"]["annotations"]["volume.kubernetes.io/selected-node"],
        node.as_str(),
        "{claim:#}"
    );
    let pv_name = claim["spec"]["volumeName"]
        .as_str()
        .expect("volume")
        .to_owned();
    let (_, pv) = cp.get_json(&format!("/api/v1/persistentvolumes/{pv_name}"));
    assert_eq!(pv["status"]["phase"], "Bound", "{pv:#}");
    assert_eq!(pv["spec"]["csi"]["driver"], "csi.ipclink.dev", "{pv:#}");
    let uid_prefix: String = claim["metadata"]["uid"]
        .as_str()
        .expect("uid")
        .replace('-', "")[..16]
        .to_owned();
    assert_eq!(
        pv["spec"]["csi"]["volumeHandle"],
        format!("vision.frames.{uid_prefix}"),
        "{pv:#}"
    );
    assert_eq!(
        pv["spec"]["csi"]["volumeAttributes"],
        json!({"link": "frames", "namespace": "vision"}),
        "{pv:#}"
    );
    assert_eq!(
        pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"],
        json!([{"matchExpressions": [{"key": "topology.ipclink.dev/node", "operator": "In", "values": [topology_value(&node)]}]}]),
        "{pv:#}"
    );
    assert_eq!(pv["spec"]["capacity"]["storage"], "8Mi", "{pv:#}");

    // The others follow the volume's node affinity.
    for p in ["det-0", "cam-1"] {
        let app = if p.starts_with("det") {
            "detector"
        } else {
            "camera"
        };
        cp.create(&pods, &pod(p, app, "frames", None, 1000, None, true));
    }
    for p in ["det-0", "cam-1"] {
        let v = cp.wait_for(
            &format!("{pods}/{p}"),
            "member scheduled",
            std::time::Duration::from_secs(90),
            |v| v["spec"]["nodeName"].is_string(),
        );
        assert_eq!(
            v["spec"]["nodeName"],
            node.as_str(),
            "{p} did not follow the volume"
        );
    }
    let link_path = format!("{}/frames", links_path(NS));
    let v = cp.wait_for(
        &link_path,
        "Scheduled=True on the claim's node",
        CONVERGE,
        |v| condition(v, "Scheduled")["status"] == "True" && v["status"]["memberCount"] == 3,
    );
    assert_eq!(v["status"]["node"], node.as_str(), "{v:#}");
    let (_, list) = cp.get_json(&format!("/api/v1/namespaces/{NS}/persistentvolumeclaims"));
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(1),
        "one claim: {list:#}"
    );
    let (_, list) = cp.get_json("/api/v1/persistentvolumes");
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(1),
        "one volume: {list:#}"
    );

    // Deleting the pods and the link deletes the claim, and the released volume.
    for p in ["cam-0", "det-0", "cam-1"] {
        cp.request("DELETE", &format!("{pods}/{p}?gracePeriodSeconds=0"), None)
            .expect("delete pod");
    }
    let (code, text) = cp.request("DELETE", &link_path, None).expect("delete link");
    assert_eq!(code, 200, "{text}");
    cp.wait_for(&link_path, "link gone", CONVERGE, |v| v["code"] == 404);
    cp.wait_for(&claim_path, "claim gone", CONVERGE, |v| v["code"] == 404);
    cp.wait_for(
        &format!("/api/v1/persistentvolumes/{pv_name}"),
        "volume gone",
        CONVERGE,
        |v| v["code"] == 404,
    );
}
