//! Persistent mode on a real control plane (kube-apiserver, kube-scheduler,
//! kube-controller-manager): the link's claim on a WaitForFirstConsumer class is bound to
//! a volume the operator provisions on the node the scheduler picked for the first
//! member, and the second member follows it there.

mod common;

use common::*;
use ipclink_core::model::names::topology_value;
use ipclink_testkit::control_plane::ControlPlane;
use serde_json::json;

const NS: &str = "vision";

/// A control plane with the scheduler and controllers, the CRD and the namespace.
fn scheduling_cluster() -> ControlPlane {
    let mut cp = ControlPlane::start();
    cp.start_scheduling();
    cp.install_ipclink_crd();
    cp.namespace(NS);
    cp
}

#[test]
fn the_first_member_picks_the_node_and_the_rest_follow() {
    let cp = scheduling_cluster();
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
    storage_class(&cp);
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
    cp.create(&links_path(NS), &link(NS, "frames", spec.clone()));
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

    // A claim may only name a class of ours: another driver's class, or one that does
    // not exist, is refused naming the field, and no claim is made.
    cp.create(
        "/apis/storage.k8s.io/v1/storageclasses",
        &json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "hostpath"}, "provisioner": "kubernetes.io/no-provisioner"})
        .to_string(),
    );
    for (name, class, says) in [
        (
            "foreign",
            "hostpath",
            "is provisioned by kubernetes.io/no-provisioner",
        ),
        ("ghost", "missing", "StorageClass missing does not exist"),
    ] {
        let mut other = spec.clone();
        other["claim"] = json!({"storageClassName": class});
        cp.create(&links_path(NS), &link(NS, name, other));
        let refused = cp.wait_for(
            &format!("{}/{name}", links_path(NS)),
            "the class refused",
            CONVERGE,
            |v| condition(v, "Accepted")["reason"] == "ClaimConflict",
        );
        let message = condition(&refused, "Accepted")["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            message.contains("spec.claim.storageClassName") && message.contains(says),
            "{message}"
        );
        let (code, _) = cp.get_json(&format!(
            "/api/v1/namespaces/{NS}/persistentvolumeclaims/{name}"
        ));
        assert_eq!(code, 404, "no claim for {name}");
    }

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

    // Claims no link made get no volume, whatever their labels say: one naming this link
    // without belonging to it, the same from another namespace, one naming a link that
    // does not exist, one whose label is not a link name.
    cp.namespace("intruder");
    let hostile = [
        (NS, "forged", "frames"),
        ("intruder", "frames", "frames"),
        ("intruder", "ghost", "ghost"),
        ("intruder", "bad-label", "Bad_Name"),
    ];
    for (ns, name, label) in hostile {
        cp.create(
            &format!("/api/v1/namespaces/{ns}/persistentvolumeclaims"),
            &json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {
                    "name": name,
                    "labels": {"ipclink.dev/link": label},
                    "annotations": {
                        "volume.kubernetes.io/selected-node": node.as_str(),
                        "volume.kubernetes.io/storage-provisioner": "csi.ipclink.dev",
                    },
                },
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "ipclink",
                    "resources": {"requests": {"storage": "8Mi"}},
                },
            })
            .to_string(),
        );
    }
    std::thread::sleep(std::time::Duration::from_secs(5));
    let (_, volumes) = cp.get_json("/api/v1/persistentvolumes");
    let claimed: Vec<(&str, &str)> = volumes["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|v| {
            let c = &v["spec"]["claimRef"];
            Some((c["namespace"].as_str()?, c["name"].as_str()?))
        })
        .collect();
    assert_eq!(claimed, [(NS, "frames")], "{volumes:#}");
    let forged = format!("/api/v1/namespaces/{NS}/persistentvolumeclaims/forged");
    cp.request("DELETE", &forged, None)
        .expect("delete the forged claim");
    let gone = std::time::Instant::now();
    while cp.get_json(&forged).0 != 404 {
        assert!(gone.elapsed() < CONVERGE, "the forged claim stays");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
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

/// The claim of link `frames`: (uid, selected node, volume name).
fn claim_of(cp: &ControlPlane) -> (String, Option<String>, Option<String>) {
    let (_, c) = cp.get_json(&format!(
        "/api/v1/namespaces/{NS}/persistentvolumeclaims/frames"
    ));
    (
        c["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
        c["metadata"]["annotations"]["volume.kubernetes.io/selected-node"]
            .as_str()
            .map(str::to_owned),
        c["spec"]["volumeName"].as_str().map(str::to_owned),
    )
}

/// Schedules member `name` and waits until the link's claim is bound on its node.
fn place(cp: &ControlPlane, name: &str) -> (String, String, String) {
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    cp.create(
        &pods,
        &pod(name, "camera", "frames", None, 1000, None, true),
    );
    let v = cp.wait_for(
        &format!("{pods}/{name}"),
        "member scheduled",
        std::time::Duration::from_secs(90),
        |v| v["spec"]["nodeName"].is_string(),
    );
    let node = v["spec"]["nodeName"].as_str().expect("node").to_owned();
    cp.wait_for(
        &format!("/api/v1/namespaces/{NS}/persistentvolumeclaims/frames"),
        "claim bound",
        CONVERGE,
        |v| v["status"]["phase"] == "Bound",
    );
    set_running(cp, NS, name);
    let (uid, selected, volume) = claim_of(cp);
    assert_eq!(selected.as_deref(), Some(node.as_str()));
    (node, uid, volume.expect("bound claim has a volume"))
}

fn rehomed_events(cp: &ControlPlane) -> Vec<String> {
    events(cp, NS, "frames")
        .into_iter()
        .filter(|(t, r, _)| t == "Warning" && r == "Rehomed")
        .map(|(_, _, n)| n)
        .collect()
}

#[test]
fn a_link_whose_node_is_lost_is_released_once_no_member_mounts_it() {
    let cp = scheduling_cluster();
    let nodes = [
        "node-a.rack-1.example.com",
        "node-b.rack-2.example.com",
        "node-c.rack-3.example.com",
    ];
    cp.add_node(nodes[0]);
    cp.add_node(nodes[1]);
    storage_class(&cp);
    let _op = Operator::start(OPERATOR, &cp, &["--rehome-after-seconds", "3"], &[]);
    let spec = json!({
        "sizeLimit": "8Mi",
        "claim": {},
        "members": [{"name": "camera", "podSelector": {"matchLabels": {"app": "camera"}}}],
        "channels": [{"name": "events", "kind": "fifo", "mode": "0666"}]
    });
    cp.create(&links_path(NS), &link(NS, "frames", spec));
    let (first, uid, volume) = place(&cp, "cam-0");

    // The node goes NotReady (an hour ago, past the 3 s grace), but cam-0 still has the
    // link mounted: nothing is released.
    let (code, text) = cp
        .request(
            "PATCH",
            &format!("/api/v1/nodes/{first}/status"),
            Some(
                &json!({"status": {"conditions": [{
                    "type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                    "message": "Kubelet stopped posting node status.",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                    "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                }]}})
                .to_string(),
            ),
        )
        .expect("node status");
    assert_eq!(code, 200, "{text}");
    std::thread::sleep(std::time::Duration::from_secs(6));
    assert_eq!(
        claim_of(&cp).0,
        uid,
        "released while a member had it mounted"
    );
    assert!(rehomed_events(&cp).is_empty(), "{:?}", rehomed_events(&cp));

    // Once the member is gone, the claim is released and made again, unbound; the old
    // volume goes; the Event says the data did not move.
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    cp.request(
        "DELETE",
        &format!("{pods}/cam-0?gracePeriodSeconds=0"),
        None,
    )
    .expect("delete pod");
    let v = cp.wait_for(
        &format!("/api/v1/namespaces/{NS}/persistentvolumeclaims/frames"),
        "a new claim",
        CONVERGE,
        |v| v["metadata"]["uid"].is_string() && v["metadata"]["uid"] != uid.as_str(),
    );
    assert_eq!(v["status"]["phase"], "Pending", "{v:#}");
    assert!(
        v["metadata"]["annotations"]["volume.kubernetes.io/selected-node"].is_null(),
        "{v:#}"
    );
    cp.wait_for(
        &format!("/api/v1/persistentvolumes/{volume}"),
        "the old volume gone",
        CONVERGE,
        |v| v["code"] == 404,
    );
    let notes = rehomed_events(&cp);
    assert!(
        notes.iter().any(|n| n.contains(&first)
            && n.contains("has not been Ready")
            && n.contains("data did not move")),
        "{notes:?}"
    );

    // The scheduler no longer offers the lost node; the next member picks another.
    let (code, text) = cp
        .request("DELETE", &format!("/api/v1/nodes/{first}"), None)
        .expect("delete node");
    assert_eq!(code, 200, "{text}");
    cp.add_node(nodes[2]);
    let (second, uid, _) = place(&cp, "cam-1");
    assert_ne!(second, first);

    // A deleted Node: the same, once its member is gone.
    let (code, text) = cp
        .request("DELETE", &format!("/api/v1/nodes/{second}"), None)
        .expect("delete node");
    assert_eq!(code, 200, "{text}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(
        claim_of(&cp).0,
        uid,
        "released while a member had it mounted"
    );
    cp.request(
        "DELETE",
        &format!("{pods}/cam-1?gracePeriodSeconds=0"),
        None,
    )
    .expect("delete pod");
    cp.wait_for(
        &format!("/api/v1/namespaces/{NS}/persistentvolumeclaims/frames"),
        "a new claim",
        CONVERGE,
        |v| v["metadata"]["uid"].is_string() && v["metadata"]["uid"] != uid.as_str(),
    );
    let notes = rehomed_events(&cp);
    assert!(
        notes
            .iter()
            .any(|n| n.contains(&second) && n.contains("was deleted")),
        "{notes:?}"
    );
    let (third, _, _) = place(&cp, "cam-2");
    assert!(third != first && third != second, "{third}");
}
