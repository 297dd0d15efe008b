//! The operator against a real kube-apiserver: admission, Invalid with an Event, status
//! through scheduling, permissions and mounting, depths from a real sidecar endpoint,
//! update, deletion held by the finalizer, metrics.

mod common;

use std::process::Command;

use common::*;
use ipclink_testkit::control_plane::ControlPlane;
use serde_json::json;

const NS: &str = "vision";

fn frames_spec() -> serde_json::Value {
    json!({
        "sizeLimit": "16Mi",
        "owner": {"uid": 1000, "gid": 2000},
        "members": [
            {"name": "camera", "podSelector": {"matchLabels": {"app": "camera"}}},
            {"name": "detector", "podSelector": {"matchLabels": {"app": "detector"}}}
        ],
        "channels": [
            {"name": "frames", "kind": "shm", "size": "1Mi", "mode": "0660", "writers": ["camera"], "readers": ["detector"]},
            {"name": "events", "kind": "fifo", "mode": "0640", "writers": ["camera"], "readers": ["detector"]},
            {"name": "control", "kind": "socket", "mode": "0770"}
        ],
        "semaphores": [{"name": "slots", "initial": 8}]
    })
}

/// Serves the runtime's links endpoint (`/v1/links`, as the sidecar and the node plugins
/// serve it) over `frames` materialized in a plain directory; returns its port.
fn sidecar(dir: &std::path::Path) -> u16 {
    ipclink_testkit::serve_links(&dir.join("root"), &[&link(NS, "frames", frames_spec())])
}

/// One control plane, one operator and one sidecar endpoint, shared by the steps of the
/// scenario below (each step builds on the link the steps before it left).
struct Scenario {
    cp: ControlPlane,
    op: Operator,
    scratch: tempfile::TempDir,
    links: String,
    path: String,
}

#[test]
fn links_are_reconciled_on_a_real_apiserver() {
    let cp = ControlPlane::start();
    without_the_crd_the_operator_stops(&cp);
    let s = Scenario::start(cp);
    admission_refuses_what_the_schema_can_say(&s);
    invalid_until_fixed(&s);
    a_valid_link_gets_the_finalizer(&s);
    members_apart_or_without_access_degrade_it(&s);
    members_on_one_node_make_it_ready(&s);
    depths_reach_the_status(&s);
    depth_writes_are_throttled(&s);
    the_metrics_name_each_link(&s);
    an_update_then_a_deletion_held_by_members(&s);
}

/// Without the CRD the operator stops at once and says what to install.
fn without_the_crd_the_operator_stops(cp: &ControlPlane) {
    // Without the CRD the operator stops at once and says what to install.
    let out = Command::new(OPERATOR)
        .args(["run", "--metrics-listen", "127.0.0.1:0"])
        .env("KUBECONFIG", &cp.kubeconfig)
        .output()
        .expect("run operator");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the IpcLink CRD (ipclinks.ipclink.dev) is not installed")
            && stderr.contains("ipclink-operator crd | kubectl apply -f -"),
        "{stderr}"
    );
}

impl Scenario {
    /// The CRD, two nodes, a sidecar endpoint for node-a and a "node plugin pod" on
    /// node-b, and the operator gathering from both.
    fn start(cp: ControlPlane) -> Scenario {
        cp.install_ipclink_crd();
        cp.namespace(NS);
        cp.add_node("node-a");
        cp.add_node("node-b");
        let scratch = tempfile::tempdir().expect("temp");
        let sidecar_port = sidecar(scratch.path());
        let endpoint = format!("node-a=127.0.0.1:{sidecar_port}");
        // A "node plugin pod" on node-b, found by label, whose podIP is the same endpoint.
        cp.namespace("ipclink-system");
        cp.create(
            "/api/v1/namespaces/ipclink-system/pods",
            &json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "node-plugin-b", "labels": {"app": "node-plugin"}},
                "spec": {"nodeName": "node-b", "containers": [{"name": "csi", "image": "ipclink-csi:local"}]}})
            .to_string(),
        );
        let (code, text) = cp
            .request(
                "PATCH",
                "/api/v1/namespaces/ipclink-system/pods/node-plugin-b/status",
                Some(r#"{"status":{"phase":"Running","podIP":"127.0.0.1","podIPs":[{"ip":"127.0.0.1"}]}}"#),
            )
            .expect("pod status");
        assert_eq!(code, 200, "{text}");
        let op = Operator::start(
            OPERATOR,
            &cp,
            &[
                "--links-endpoint",
                &endpoint,
                "--node-plugins",
                "ipclink-system/app=node-plugin",
                "--node-plugin-port",
                &sidecar_port.to_string(),
                // The "node plugin" here is a sidecar on loopback: plain HTTP.
                "--node-plugin-scheme",
                "http",
                "--depth-interval-seconds",
                "1",
                "--status-min-interval-seconds",
                "3",
            ],
            &[],
        );
        let links = links_path(NS);
        Scenario {
            path: format!("{links}/frames"),
            links,
            cp,
            op,
            scratch,
        }
    }
}

/// What the schema can say is refused at admission, one field each, and nothing is stored.
fn admission_refuses_what_the_schema_can_say(s: &Scenario) {
    let (cp, links) = (&s.cp, &s.links);
    let mut bad_name = frames_spec();
    bad_name["channels"][0]["name"] = "Bad_Name".into();
    let mut setuid = frames_spec();
    setuid["channels"][1]["mode"] = "4777".into();
    let mut no_size = frames_spec();
    no_size["channels"][0]
        .as_object_mut()
        .expect("obj")
        .remove("size");
    let mut clash = frames_spec();
    clash["semaphores"][0]["name"] = "events".into();
    let mut uid = frames_spec();
    uid["owner"]["uid"] = (-1).into();
    let mut initial = frames_spec();
    initial["semaphores"][0]["initial"] = 2_147_483_648_i64.into();
    let mut twice = frames_spec();
    twice["channels"][2]["name"] = "events".into();
    // More that the schema refuses, one field each.
    let mutated = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut spec = frames_spec();
        f(&mut spec);
        spec
    };
    let more: Vec<(serde_json::Value, &str, &str)> = vec![
        (
            mutated(&|s| s["members"][0]["name"] = "Camera".into()),
            "spec.members[0].name",
            "should match",
        ),
        (
            mutated(&|s| s["channels"][0]["kind"] = "pipe".into()),
            "spec.channels[0].kind",
            "Unsupported value",
        ),
        (
            mutated(&|s| s["semaphores"][0]["abi"] = "bsd".into()),
            "spec.semaphores[0].abi",
            "Unsupported value",
        ),
        (
            mutated(&|s| s["channels"][1]["mode"] = 660.into()),
            "spec.channels[1].mode",
            "string",
        ),
        (
            mutated(&|s| s["channels"][1]["mode"] = "0o660".into()),
            "spec.channels[1].mode",
            "should match",
        ),
        (
            mutated(&|s| {
                s["allowCreate"] = true.into();
                s["rootMode"] = "0777".into();
            }),
            "spec.rootMode",
            "should match",
        ),
        (
            mutated(&|s| s["rootMode"] = "1777".into()),
            "spec.rootMode",
            "rootMode applies only with allowCreate",
        ),
        (
            mutated(&|s| {
                s["members"] = (0..65)
                    .map(|i| json!({"name": format!("m{i}")}))
                    .collect::<Vec<_>>()
                    .into();
            }),
            "spec.members",
            "must have at most 64 items",
        ),
        (
            mutated(&|s| s["channels"][0]["name"] = "a".repeat(64).into()),
            "spec.channels[0].name",
            "may not be more than 63",
        ),
        (
            mutated(&|s| s["owner"]["gid"] = 4_294_967_295_i64.into()),
            "spec.owner.gid",
            "less than or equal to",
        ),
        (
            mutated(&|s| s["channels"][1]["writers"] = json!(["Bad_Name"])),
            "spec.channels[1].writers[0]",
            "should match",
        ),
        (
            mutated(&|s| s["semaphores"][0]["initial"] = (-1).into()),
            "spec.semaphores[0].initial",
            "greater than or equal to 0",
        ),
        (
            mutated(&|s| s["channels"][2]["name"] = "../etc".into()),
            "spec.channels[2].name",
            "should match",
        ),
        (
            mutated(&|s| s["members"][1]["podSelector"] = "app=detector".into()),
            "spec.members[1].podSelector",
            "object",
        ),
        (
            mutated(&|s| {
                s["channels"][1] = json!({"name": "jobs", "kind": "queue", "messageSize": 64})
            }),
            "spec.channels[1].capacity",
            "capacity is required for a queue channel",
        ),
        (
            mutated(&|s| {
                s["channels"][1] =
                    json!({"name": "jobs", "kind": "queue", "capacity": 0, "messageSize": 64})
            }),
            "spec.channels[1].capacity",
            "greater than or equal to 1",
        ),
        (
            mutated(&|s| s["channels"][1]["capacity"] = 8.into()),
            "spec.channels[1].capacity",
            "not allowed for other kinds",
        ),
        (
            mutated(&|s| s["scope"] = "Cluster".into()),
            "spec.scope",
            "Unsupported value",
        ),
        (
            mutated(&|s| s["members"][0]["role"] = "admin".into()),
            "spec.members[0].role",
            "Unsupported value",
        ),
        (
            mutated(&|s| {
                s["scope"] = "Node".into();
                s["claim"] = json!({});
            }),
            "spec.claim",
            "a node-scoped link has an instance on every node",
        ),
    ];
    // The sticky bit is for socket directories only.
    let mut sticky_fifo = frames_spec();
    sticky_fifo["channels"][1]["mode"] = "1660".into();
    let mut sticky_semaphore = frames_spec();
    sticky_semaphore["semaphores"][0]["mode"] = "1660".into();
    for (spec, field, says) in [
        (bad_name, "spec.channels[0].name", "should match"),
        (setuid, "spec.channels[1].mode", "should match"),
        (
            no_size,
            "spec.channels[0].size",
            "size is required for an shm channel",
        ),
        (clash, "spec.semaphores", "a name may be used once"),
        (
            uid,
            "spec.owner.uid",
            "should be greater than or equal to 0",
        ),
        (
            initial,
            "spec.semaphores[0].initial",
            "should be less than or equal to 2147483647",
        ),
        (twice, "spec.channels[2]", "Duplicate value"),
        (
            sticky_fifo,
            "spec.channels[1].mode",
            "allowed only on socket channels",
        ),
        (
            sticky_semaphore,
            "spec.semaphores[0].mode",
            "allowed only on socket channels",
        ),
    ]
    .into_iter()
    .chain(more)
    {
        let (code, text) = cp
            .request("POST", links, Some(&link(NS, "rejected", spec)))
            .expect("post");
        assert_eq!(code, 422, "{field}: {text}");
        assert!(
            text.contains(field) && text.contains(says),
            "{field} / {says}: {text}"
        );
    }
    let (_, list) = cp.get_json(links);
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "{list}");

    // A live link's scope cannot change, either way; the link keeps its own.
    let node_scoped = mutated(&|s| s["scope"] = "Node".into());
    let (code, text) = cp
        .request("POST", links, Some(&link(NS, "scoped", node_scoped)))
        .expect("post");
    assert_eq!(code, 201, "{text}");
    let one = format!("{links}/scoped");
    for scope in [json!("Link"), serde_json::Value::Null] {
        let patch = json!({"spec": {"scope": scope}}).to_string();
        let (code, text) = cp.request("PATCH", &one, Some(&patch)).expect("patch");
        assert_eq!(code, 422, "{scope}: {text}");
        assert!(
            text.contains("spec.scope") && text.contains("scope cannot change on a live link"),
            "{text}"
        );
    }
    let (_, kept) = cp.get_json(&one);
    assert_eq!(kept["spec"]["scope"], "Node", "{kept}");
    let (code, text) = cp.request("DELETE", &one, None).expect("delete");
    assert!(code == 200 || code == 202, "{text}");
    cp.wait_for(&one, "the node-scoped link gone", CONVERGE, |v| {
        v["code"] == 404
    });
}

/// What only the operator can judge: Invalid, with an Event naming the field; fixing the spec (an update) makes it valid.
fn invalid_until_fixed(s: &Scenario) {
    let (cp, links) = (&s.cp, &s.links);
    let mut ghost = frames_spec();
    ghost["channels"][1]["readers"] = json!(["ghost"]);
    ghost["channels"][2]["mode"] = "1770".into(); // a sticky socket directory is admitted
    cp.create(links, &link(NS, "broken", ghost));
    let broken = cp.wait_for(
        &format!("{links}/broken"),
        "broken goes Invalid",
        CONVERGE,
        |v| v["status"]["phase"] == "Invalid",
    );
    let accepted = condition(&broken, "Accepted");
    assert_eq!(accepted["reason"], "InvalidSpec", "{broken:#}");
    assert!(
        accepted["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.channels[1].readers[0]") && m.contains("ghost")),
        "{broken:#}"
    );
    let start = std::time::Instant::now();
    while !events(cp, NS, "broken").iter().any(|(t, r, n)| {
        t == "Warning" && r == "InvalidSpec" && n.contains("spec.channels[1].readers[0]")
    }) {
        assert!(
            start.elapsed() < CONVERGE,
            "no InvalidSpec event: {:?}",
            events(cp, NS, "broken")
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Fixing the spec (an update) makes it valid.
    let (code, text) = cp
        .request(
            "PATCH",
            &format!("{links}/broken"),
            Some(&json!({"spec": {"channels": frames_spec()["channels"]}}).to_string()),
        )
        .expect("patch");
    assert_eq!(code, 200, "{text}");
    cp.wait_for(
        &format!("{links}/broken"),
        "broken accepted after the fix",
        CONVERGE,
        |v| v["status"]["phase"] == "Pending" && condition(v, "Accepted")["status"] == "True",
    );
}

/// A valid link: accepted, finalizer set, counts for `kubectl get ipcl`.
fn a_valid_link_gets_the_finalizer(s: &Scenario) {
    let (cp, links, path) = (&s.cp, &s.links, &s.path);
    cp.create(links, &link(NS, "frames", frames_spec()));
    let v = cp.wait_for(path, "frames accepted", CONVERGE, |v| {
        condition(v, "Accepted")["status"] == "True"
    });
    assert_eq!(
        v["metadata"]["finalizers"],
        json!(["ipclink.dev/cleanup"]),
        "{v:#}"
    );
    assert_eq!(v["status"]["channelCount"], 4, "{v:#}");
    assert_eq!(v["status"]["phase"], "Pending", "{v:#}");
}

/// Members on two nodes, and a writer whose uid cannot write its channel. The node plugin of
/// node-b claimed the link first (its Lease, labelled with the link as the node plugin
/// labels it): the link lives there, so the member on node-a is the one named as elsewhere
/// (by member count and name alone it would be node-a).
fn members_apart_or_without_access_degrade_it(s: &Scenario) {
    let (cp, path) = (&s.cp, &s.path);
    let leases = format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases");
    cp.create(
        &leases,
        r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"ipclink-frames","labels":{"ipclink.dev/link":"frames"}},"spec":{"holderIdentity":"node-b"}}"#,
    );
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    cp.create(
        &pods,
        &pod(
            "cam-0",
            "camera",
            "frames",
            Some("node-a"),
            1001,
            None,
            false,
        ),
    );
    cp.create(
        &pods,
        &pod(
            "det-0",
            "detector",
            "frames",
            Some("node-b"),
            1002,
            Some(2000),
            false,
        ),
    );
    let v = cp.wait_for(
        path,
        "Scheduled=False and PermissionsConsistent=False",
        CONVERGE,
        |v| {
            condition(v, "Scheduled")["status"] == "False"
                && condition(v, "PermissionsConsistent")["status"] == "False"
        },
    );
    assert_eq!(v["status"]["phase"], "Degraded", "{v:#}");
    let scheduled = condition(&v, "Scheduled")["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(v["status"]["node"], "node-b", "{v:#}");
    assert!(
        scheduled.contains("the link lives on node node-b")
            && scheduled.contains("cam-0 on node node-a"),
        "{scheduled}"
    );
    let (code, text) = cp
        .request("DELETE", &format!("{leases}/ipclink-frames"), None)
        .expect("delete the claim");
    assert_eq!(code, 200, "{text}");
    let perms = condition(&v, "PermissionsConsistent")["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        perms.contains("member camera (pod cam-0, container main, uid 1001")
            && perms.contains("cannot write channel events (mode 0640, owner 1000:2000)"),
        "{perms}"
    );
    assert_eq!(
        condition(&v, "PermissionsConsistent")["reason"],
        "MemberCannotUseChannel"
    );
}

/// Replaced by pods on one node with fitting identities, then running (mounted).
fn members_on_one_node_make_it_ready(s: &Scenario) {
    let (cp, path) = (&s.cp, &s.path);
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    for p in ["cam-0", "det-0"] {
        let (code, text) = cp
            .request("DELETE", &format!("{pods}/{p}?gracePeriodSeconds=0"), None)
            .expect("delete pod");
        assert_eq!(code, 200, "{text}");
    }
    cp.create(
        &pods,
        &pod(
            "cam-1",
            "camera",
            "frames",
            Some("node-a"),
            1000,
            None,
            false,
        ),
    );
    cp.create(
        &pods,
        &pod(
            "det-1",
            "detector",
            "frames",
            Some("node-a"),
            1002,
            Some(2000),
            false,
        ),
    );
    let v = cp.wait_for(path, "Scheduled=True on node-a", CONVERGE, |v| {
        condition(v, "Scheduled")["status"] == "True"
            && condition(v, "PermissionsConsistent")["status"] == "True"
    });
    assert_eq!(v["status"]["node"], "node-a", "{v:#}");
    assert_eq!(v["status"]["phase"], "Pending", "{v:#}");
    for p in ["cam-1", "det-1"] {
        set_running(cp, NS, p);
    }
    let v = cp.wait_for(path, "frames Ready", CONVERGE, |v| {
        v["status"]["phase"] == "Ready"
    });
    assert_eq!(v["status"]["memberCount"], 2, "{v:#}");
    let members = v["status"]["members"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        members
            .iter()
            .all(|m| m["mounted"] == true && m["node"] == "node-a")
            && members.len() == 2,
        "{v:#}"
    );
    assert!(
        events(cp, NS, "frames")
            .iter()
            .any(|(t, r, _)| t == "Normal" && r == "Ready"),
        "{:?}",
        events(cp, NS, "frames")
    );
}

/// Depths gathered from the sidecar's /v1/links reach status, with an object a member
/// created beside the declared ones.
fn depths_reach_the_status(s: &Scenario) {
    let (cp, path) = (&s.cp, &s.path);
    std::fs::write(
        s.scratch.path().join("root/vision/frames/made-by-member"),
        vec![1u8; 8192],
    )
    .expect("a member's own region");
    let v = cp.wait_for(path, "semaphore value in status.channels", CONVERGE, |v| {
        v["status"]["channels"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == "slots" && c["value"] == 8))
            && v["status"]["createdObjects"] == 1
    });
    assert!(
        v["status"]["channels"]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| {
                c["name"] == "made-by-member" && c["kind"] == "shm" && c["discovered"] == true
            })),
        "{v:#}"
    );
    assert!(
        v["status"]["channels"].as_array().is_some_and(|cs| cs
            .iter()
            .any(|c| c["name"] == "events" && c["kind"] == "fifo")),
        "{v:#}"
    );
    assert!(
        v["status"]["channels"].as_array().is_some_and(|cs| cs
            .iter()
            .filter(|c| c["kind"] == "shm")
            .all(|c| c.get("queueBytes").is_none())),
        "a region's size is no queue: {v:#}"
    );
    assert!(v["status"]["depthsObservedTime"].is_string(), "{v:#}");
    assert!(v["status"].get("depthsStale").is_none(), "{v:#}");
}

/// Depths that change at every round (1 s) are written at most once per
/// --status-min-interval-seconds (3 s), and the last figures still arrive; once the
/// figures stop changing, so do the writes (a stamp finer than the API server keeps would
/// differ from the stored one and be written again and again).
fn depth_writes_are_throttled(s: &Scenario) {
    let (cp, path) = (&s.cp, &s.path);
    let writes = |text: &str| metric(text, "ipclink_status_writes_total", &[]).unwrap_or(0.0);
    let before = writes(&s.op.metrics());
    let started = std::time::Instant::now();
    for i in 0..8 {
        std::fs::write(
            s.scratch
                .path()
                .join(format!("root/vision/frames/made-{i}")),
            [1u8; 64],
        )
        .expect("another region");
        std::thread::sleep(std::time::Duration::from_millis(750));
    }
    let spent = started.elapsed().as_secs_f64();
    let during = writes(&s.op.metrics()) - before;
    assert!(
        during >= 1.0 && during <= (spent / 3.0).ceil() + 1.0,
        "{during} status writes in {spent:.1} s of changing depths"
    );
    cp.wait_for(path, "the last depths in status", CONVERGE, |v| {
        v["status"]["createdObjects"] == 9
    });
    // Once the figures stop changing, so do the writes (a stamp finer than the API
    // server keeps would differ from the stored one and be written again and again).
    std::thread::sleep(std::time::Duration::from_secs(4));
    let settled = writes(&s.op.metrics());
    std::thread::sleep(std::time::Duration::from_secs(7));
    assert_eq!(
        writes(&s.op.metrics()),
        settled,
        "status written with nothing new"
    );
}

/// The operator names each link for alerts; the channel families are the node plugins'
/// own and not exported here a second time.
fn the_metrics_name_each_link(s: &Scenario) {
    let (cp, path) = (&s.cp, &s.path);
    let text = s.op.metrics();
    let (_, v) = cp.get_json(path);
    let node = v["status"]["node"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        metric(
            &text,
            "ipclink_link_info",
            &[
                ("namespace", "vision"),
                ("link", "frames"),
                ("phase", "Ready"),
                ("node", node.as_str()),
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        !text.contains("ipclink_semaphore_value") && !text.contains("ipclink_channel_"),
        "{text}"
    );
    assert!(
        metric(&text, "ipclink_reconcile_total", &[("result", "ok")]).is_some_and(|n| n >= 5.0),
        "{text}"
    );
    assert!(
        metric(&text, "ipclink_reconcile_total", &[("result", "invalid")])
            .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "ipclink_links", &[("phase", "Ready")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "ipclink_links", &[("phase", "Pending")]),
        Some(1.0),
        "{text}"
    );
    assert!(
        metric(&text, "ipclink_reconcile_duration_seconds_count", &[]).is_some_and(|n| n >= 5.0),
        "{text}"
    );
    assert!(
        metric(&text, "ipclink_depth_endpoints", &[("state", "answered")])
            .is_some_and(|n| n >= 1.0)
            && metric(&text, "ipclink_depth_round_duration_seconds_count", &[])
                .is_some_and(|n| n >= 1.0),
        "{text}"
    );
}

/// An update (one more semaphore) that the status follows; then deletion waits while
/// members have the link mounted, quietly, and completes once they are gone.
fn an_update_then_a_deletion_held_by_members(s: &Scenario) {
    let (cp, path) = (&s.cp, &s.path);
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    let mut spec = frames_spec();
    spec["semaphores"] = json!([{"name": "slots", "initial": 8}, {"name": "done", "initial": 0}]);
    let (code, text) = cp
        .request("PATCH", path, Some(&json!({"spec": spec}).to_string()))
        .expect("patch");
    assert_eq!(code, 200, "{text}");
    cp.wait_for(path, "channelCount follows the update", CONVERGE, |v| {
        v["status"]["channelCount"] == 5
            && v["status"]["observedGeneration"] == v["metadata"]["generation"]
    });

    // Deletion waits while members have the link mounted, then completes.
    let (code, text) = cp.request("DELETE", path, None).expect("delete");
    assert_eq!(code, 200, "{text}");
    let v = cp.wait_for(path, "Terminating while mounted", CONVERGE, |v| {
        v["status"]["phase"] == "Terminating"
    });
    let held = condition(&v, "Terminating")["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(held.contains("cam-1") && held.contains("det-1"), "{v:#}");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (code, later) = cp.get_json(path);
    assert_eq!(code, 200, "deleted while still mounted");
    // Waiting is quiet: the status is not rewritten while nothing changes.
    assert_eq!(
        later["metadata"]["resourceVersion"], v["metadata"]["resourceVersion"],
        "the link was rewritten while waiting:\n{later:#}"
    );
    for p in ["cam-1", "det-1"] {
        cp.request("DELETE", &format!("{pods}/{p}?gracePeriodSeconds=0"), None)
            .expect("delete pod");
    }
    cp.wait_for(path, "frames deleted after unmount", CONVERGE, |v| {
        v["code"] == 404
    });
}

/// `SpecApplied` follows what the node holding a link reports: `Applied` when it serves
/// the spec, `Unknown` (`Applying`) while it has not applied an edit yet, and `False`
/// with a Warning Event naming the field while a change waits for the members to leave.
#[test]
fn spec_applied_says_what_waits_for_the_members() {
    use ipclink_core::{InProcess, StorageMode, Store};
    let cp = ControlPlane::start();
    cp.install_ipclink_crd();
    cp.namespace(NS);
    let scratch = tempfile::tempdir().expect("temp");
    let root = scratch.path().join("root");
    let store = Store::open(&root, StorageMode::PlainDir).expect("store");
    let plan_of = |spec: serde_json::Value| {
        let link = &ipclink_core::parse_links("x", &link(NS, "frames", spec)).expect("parse")[0];
        ipclink_core::validate(link).expect("valid")
    };
    let smaller = {
        let mut s = frames_spec();
        s["channels"][0]["size"] = json!("512Ki");
        s
    };
    store
        .apply(&plan_of(frames_spec()), &InProcess, true)
        .expect("materialize");
    let (port, probes) = ipclink_testkit::serve_records(&root);
    cp.create(&links_path(NS), &link(NS, "frames", frames_spec()));
    let _op = Operator::start(
        OPERATOR,
        &cp,
        &[
            "--links-endpoint",
            &format!("node-a=127.0.0.1:{port}"),
            "--depth-interval-seconds",
            "1",
        ],
        &[],
    );
    let path = format!("{}/frames", links_path(NS));
    let said = |want: &'static str| {
        move |v: &serde_json::Value| condition(v, "SpecApplied")["reason"] == want
    };
    cp.wait_for(&path, "SpecApplied=True", CONVERGE, said("Applied"));

    // The spec is edited; the node has not applied it yet.
    let (code, text) = cp
        .request("PATCH", &path, Some(&json!({"spec": smaller}).to_string()))
        .expect("patch");
    assert_eq!(code, 200, "{text}");
    let v = cp.wait_for(&path, "SpecApplied=Unknown", CONVERGE, said("Applying"));
    assert_eq!(condition(&v, "SpecApplied")["status"], "Unknown", "{v:#}");

    // The node applies it with a member holding the link: the smaller region waits.
    let outcome = store
        .apply(&plan_of(smaller.clone()), &InProcess, false)
        .expect("apply");
    assert_eq!(outcome.pending.len(), 1, "{outcome:?}");
    probes
        .lock()
        .expect("probes")
        .set_probes(ipclink_testkit::probe_records(&store));
    let v = cp.wait_for(
        &path,
        "SpecApplied=False",
        CONVERGE,
        said("WaitingForMembersToLeave"),
    );
    let c = condition(&v, "SpecApplied");
    assert_eq!(c["status"], "False", "{v:#}");
    assert!(
        c["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.channels[0].size") && m.contains("512Ki")),
        "{v:#}"
    );
    cp.wait_for(&path, "the Warning Event", CONVERGE, |_| {
        events(&cp, NS, "frames").iter().any(|(t, r, m)| {
            t == "Warning" && r == "WaitingForMembersToLeave" && m.contains("spec.channels[0].size")
        })
    });

    // The members leave; the change is made; the condition says so.
    let outcome = store
        .apply(&plan_of(smaller), &InProcess, true)
        .expect("apply");
    assert!(outcome.pending.is_empty(), "{outcome:?}");
    probes
        .lock()
        .expect("probes")
        .set_probes(ipclink_testkit::probe_records(&store));
    cp.wait_for(&path, "SpecApplied=True again", CONVERGE, said("Applied"));
}
