//! Two real nodes on one control plane: two kubelets, each with its own containerd,
//! root directory, CNI bridge and subnet, kubelet cgroup root and mount namespace (in
//! which its kubelet directory appears at the one path the chart's `kubeletDir` names,
//! as `/var/lib/kubelet` does on every node of a real cluster). Their names are
//! FQDNs. The chart is installed once; its DaemonSet runs a node plugin on each node.
//!
//! - An inline link lives on one node: a member forced onto the other gets
//!   `FailedMount` naming the link's node, nothing is materialized or mounted there,
//!   and the operator's condition names both nodes.
//! - A node-scoped link (`examples/kubernetes/node-agent.yaml`): an agent DaemonSet
//!   serves a socket on each node, and a client on each node reaches its own node's
//!   agent only, through a read-only mount that refuses create, unlink, rename and bind
//!   (EROFS) but lets it connect; the agent names each client's pod as the node plugin
//!   tells it; the agent rolled out while the clients retry; the status counts both
//!   nodes; each node's instance goes with the link.
//! - A persistent link's members land on one node through the real scheduler. With
//!   the members gone, that node drained, stopped and deleted, the operator releases
//!   the link's volume (an Event says its data did not move) and the next members
//!   start on the other node and exchange frames there.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ipclink_testkit::control_plane::ControlPlane;
use ipclink_testkit::mounts::mount_points_under;
use ipclink_testkit::node::Node;
use ipclink_testkit::{output_text as text, repo_root as root, script_path as script};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(150);
const NODES: [&str; 2] = ["node-a.zone-1.ipclink.test", "node-b.zone-2.ipclink.test"];

/// The running pods with label `app`, as (name, node).
fn running(cp: &ControlPlane, ns: &str, app: &str) -> Vec<(String, String)> {
    let (_, v) = cp.get_json(&format!(
        "/api/v1/namespaces/{ns}/pods?labelSelector=app={app}"
    ));
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
        })
        .map(|p| {
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                p["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

/// Waits for one running pod with label `app`; returns (name, node).
fn one_running(cp: &ControlPlane, ns: &str, app: &str) -> (String, String) {
    let start = Instant::now();
    loop {
        if let [one] = running(cp, ns, app).as_slice() {
            return one.clone();
        }
        assert!(
            start.elapsed() < LONG,
            "{ns}: no running {app} pod\n{}",
            cp.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until container `app` of `pod` on `node` has logged `want`.
fn wait_log(node: &Node, ns: &str, pod: &str, app: &str, want: &str) {
    let start = Instant::now();
    while !node.container_log(ns, pod, app).contains(want) {
        assert!(
            start.elapsed() < LONG,
            "{ns}/{pod} on {}: no {want:?} in\n{}",
            node.name,
            node.container_log(ns, pod, app)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits for an Event with `reason` in `ns` (about `object`, when given) whose message
/// contains `needle`; returns that message.
fn wait_event(
    cp: &ControlPlane,
    ns: &str,
    reason: &str,
    object: Option<&str>,
    needle: &str,
) -> String {
    let start = Instant::now();
    loop {
        let (_, v) = cp.get_json(&format!("/api/v1/namespaces/{ns}/events"));
        let found: Vec<String> = v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["reason"] == reason)
            .filter(|e| object.is_none_or(|o| e["involvedObject"]["name"] == o))
            .filter_map(|e| e["message"].as_str().map(str::to_owned))
            .collect();
        if let Some(m) = found.iter().find(|m| m.contains(needle)) {
            return m.clone();
        }
        assert!(
            start.elapsed() < LONG,
            "no {reason} Event with {needle:?}: {found:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The link's `Scheduled` condition.
fn scheduled(link: &Value) -> Value {
    link["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Scheduled").cloned())
        .unwrap_or(Value::Null)
}

#[test]
fn links_live_on_one_of_two_nodes_and_move_when_their_node_is_lost() {
    let images = script("build-images");
    let tools = script("install-chart-tools");
    let began = Instant::now();
    let step = |what: &str| eprintln!("{:>6.1} s  {what}", began.elapsed().as_secs_f64());
    let mut cp = ControlPlane::start_in_cluster();
    cp.start_scheduling();
    // The path every node shows its own kubelet directory at.
    let common = tempfile::Builder::new()
        .prefix("ipclink-kubelet-")
        .tempdir()
        .expect("temp dir");
    let kubelet_dir = common.path();
    let mut nodes: Vec<Option<Node>> = NODES
        .iter()
        .zip(1u8..)
        .map(|(name, index)| {
            let node = Node::start_isolated(&cp, name, index, kubelet_dir);
            for archive in ["ipclink.tar", "demo.tar", "python.tar"] {
                node.import_archive(&images.join(archive));
            }
            Some(node)
        })
        .collect();
    let node = |nodes: &[Option<Node>], name: &str| -> usize {
        nodes
            .iter()
            .position(|n| n.as_ref().is_some_and(|n| n.name == name))
            .unwrap_or_else(|| panic!("no running node {name}"))
    };
    let run = |cmd: &mut Command| -> Output {
        cmd.current_dir(root())
            .env("KUBECONFIG", &cp.kubeconfig)
            .output()
            .expect("run")
    };
    let kubectl = |args: &[&str]| run(Command::new(cp.bin_dir().join("kubectl")).args(args));
    let must = |out: Output| {
        assert!(out.status.success(), "{}", text(&out));
        out
    };
    // What a user waits on: the link's Ready condition.
    let link_ready = |ns: &str| {
        must(kubectl(&[
            "wait",
            "ipcl/frames",
            "-n",
            ns,
            "--for=condition=Ready",
            "--timeout=150s",
        ]))
    };
    let scale_members = |ns: &str, replicas: &str| {
        must(kubectl(&[
            "scale",
            "deployment/camera",
            "deployment/detector",
            "-n",
            ns,
            &format!("--replicas={replicas}"),
        ]))
    };

    step("two nodes Ready, images imported");
    let state = kubelet_dir.join("ipclink-state");
    must(run(Command::new(tools.join("helm"))
        .args(["install", "ipclink"])
        .arg(root().join("charts/ipclink"))
        .args(["--namespace", "ipclink-system", "--create-namespace"])
        .arg("--set")
        .arg(format!("kubeletDir={}", kubelet_dir.display()))
        .arg("--set")
        .arg(format!("node.stateDir={}", state.display()))
        .args([
            "--set",
            "image.pullPolicy=Never",
            "--set",
            "operator.depthIntervalSeconds=2",
            "--set",
            "node.gcIntervalSeconds=2",
        ])));
    for n in nodes.iter().flatten() {
        n.wait_for_driver(&cp, "csi.ipclink.dev", LONG);
    }
    let rollout = kubectl(&[
        "rollout",
        "status",
        "deployment/ipclink-operator",
        "-n",
        "ipclink-system",
        "--timeout=150s",
    ]);
    assert!(
        rollout.status.success(),
        "{}\n{}",
        text(&rollout),
        text(&kubectl(&["get", "pods", "-A", "-o", "wide"]))
    );

    step("the chart installed: a node plugin registered on each node, the operator rolled out");

    node_agents(&cp, &nodes, &state, &kubectl);
    step(
        "a node-scoped link: each node's client answered by its own node's agent, through a rollout",
    );

    // An inline link: its members on one node (the example's podAffinity).
    let inline = root().join("examples/kubernetes/inline.yaml");
    let inline = inline.to_str().expect("utf-8");
    must(kubectl(&["apply", "-f", inline]));
    let ns = "vision-inline";
    link_ready(ns);
    let link_path = format!("/apis/ipclink.dev/v1alpha1/namespaces/{ns}/ipclinks/frames");
    let (camera, home) = one_running(&cp, ns, "camera");
    let (_, detector_node) = one_running(&cp, ns, "detector");
    assert_eq!(detector_node, home);
    let (_, link) = cp.get_json(&link_path);
    assert_eq!(link["status"]["node"], home.as_str(), "{link:#}");
    let other = NODES.iter().find(|n| **n != home).expect("other node");
    wait_log(
        nodes[node(&nodes, &home)].as_ref().expect("node"),
        ns,
        &camera,
        "camera",
        "produce: 1000 frames",
    );

    // A member forced onto the other node: refused, naming the link's node; nothing
    // of the link on that node.
    let (_, d) = cp.get_json(&format!(
        "/apis/apps/v1/namespaces/{ns}/deployments/detector"
    ));
    let mut spec = d["spec"]["template"]["spec"].clone();
    spec.as_object_mut().expect("spec").remove("affinity");
    spec["nodeName"] = json!(other);
    cp.create(
        &format!("/api/v1/namespaces/{ns}/pods"),
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "stray-detector", "namespace": ns, "labels": {"app": "detector"}},
            "spec": spec,
        })
        .to_string(),
    );
    let refusal = wait_event(
        &cp,
        ns,
        "FailedMount",
        Some("stray-detector"),
        "lives on node",
    );
    assert!(
        refusal.contains(&format!("lives on node {home}"))
            && refusal.contains(&format!("this is node {other}"))
            && refusal.contains("FailedPrecondition"),
        "{refusal}"
    );
    step(&format!("refused on {other}: {refusal}"));
    let stray = nodes[node(&nodes, other)].as_ref().expect("node");
    let links_of = |n: &Node| -> Vec<String> {
        n.mount_points()
            .into_iter()
            .filter(|m| m.contains("/ipclink-state/links/") || m.contains("stray-detector"))
            .collect()
    };
    assert_eq!(links_of(stray), Vec::<String>::new(), "mounted on {other}");
    assert!(
        !stray
            .path(&state.join("links").join(ns))
            .join("frames")
            .exists(),
        "the link was materialized on {other}"
    );
    let held = nodes[node(&nodes, &home)].as_ref().expect("node");
    assert!(
        held.path(&state.join("links").join(ns))
            .join("frames")
            .exists(),
        "the link is not on {home}"
    );
    let (_, pod) = cp.get_json(&format!("/api/v1/namespaces/{ns}/pods/stray-detector"));
    assert_ne!(pod["status"]["phase"], "Running", "{pod:#}");
    let link = cp.wait_for(&link_path, "Scheduled=False naming both nodes", LONG, |v| {
        let c = scheduled(v);
        c["status"] == "False"
            && c["message"]
                .as_str()
                .is_some_and(|m| m.contains(home.as_str()) && m.contains(other))
    });
    assert_eq!(scheduled(&link)["reason"], "MembersOnDifferentNodes");
    step(&format!("Scheduled=False: {}", scheduled(&link)["message"]));
    // The members on the link's node never stopped.
    let (_, after) = one_running(&cp, ns, "camera");
    assert_eq!(after, home);
    must(kubectl(&[
        "delete",
        "-f",
        inline,
        "--wait=true",
        "--timeout=150s",
    ]));
    step("the inline example deleted");

    // A persistent link: the scheduler places the first member, the volume's node
    // affinity brings the other to the same node.
    let persistent = root().join("examples/kubernetes/persistent.yaml");
    must(kubectl(&[
        "apply",
        "-f",
        persistent.to_str().expect("utf-8"),
    ]));
    let ns = "vision-persistent";
    let link_path = format!("/apis/ipclink.dev/v1alpha1/namespaces/{ns}/ipclinks/frames");
    link_ready(ns);
    let (_, lost) = one_running(&cp, ns, "camera");
    let (detector, detector_node) = one_running(&cp, ns, "detector");
    assert_eq!(detector_node, lost, "the members on two nodes");
    let (_, link) = cp.get_json(&link_path);
    assert_eq!(link["status"]["node"], lost.as_str(), "{link:#}");
    wait_log(
        nodes[node(&nodes, &lost)].as_ref().expect("node"),
        ns,
        &detector,
        "detector",
        "consume: 1000 frames",
    );
    let (_, claim) = cp.get_json(&format!(
        "/api/v1/namespaces/{ns}/persistentvolumeclaims/frames"
    ));
    let old_claim = claim["metadata"]["uid"].as_str().expect("uid").to_owned();
    let old_volume = claim["spec"]["volumeName"]
        .as_str()
        .expect("volume")
        .to_owned();
    step(&format!(
        "persistent link on {lost}, both members there, frames exchanged"
    ));

    // The members leave; the node is drained, stops and is deleted.
    scale_members(ns, "0");
    let start = Instant::now();
    while !(running(&cp, ns, "camera").is_empty() && running(&cp, ns, "detector").is_empty()) {
        assert!(start.elapsed() < LONG, "the members did not leave");
        std::thread::sleep(Duration::from_millis(500));
    }
    step("the members left");
    must(kubectl(&[
        "drain",
        &lost,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--timeout=150s",
    ]));
    let i = node(&nodes, &lost);
    drop(nodes[i].take());
    must(kubectl(&["delete", "node", &lost, "--wait=true"]));
    step(&format!("{lost} drained, stopped and deleted"));

    // The operator releases the volume; the next members start on the other node.
    cp.wait_for(
        &format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/frames"),
        "a new claim",
        LONG,
        |v| v["metadata"]["uid"].is_string() && v["metadata"]["uid"] != old_claim.as_str(),
    );
    let rehomed = wait_event(&cp, ns, "Rehomed", None, &lost);
    assert!(
        rehomed.contains("was deleted") && rehomed.contains("data did not move"),
        "{rehomed}"
    );
    step(&format!("Rehomed: {rehomed}"));
    scale_members(ns, "1");
    let (_, camera_node) = one_running(&cp, ns, "camera");
    let (detector, detector_node) = one_running(&cp, ns, "detector");
    let survivor = NODES.iter().find(|n| **n != lost).expect("survivor");
    assert_eq!(camera_node, *survivor);
    assert_eq!(detector_node, *survivor);
    wait_log(
        nodes[node(&nodes, survivor)].as_ref().expect("node"),
        ns,
        &detector,
        "detector",
        "consume: 1000 frames",
    );
    let link = cp.wait_for(&link_path, "the link Ready on the other node", LONG, |v| {
        v["status"]["phase"] == "Ready" && v["status"]["node"] == *survivor
    });
    assert_eq!(link["status"]["node"], *survivor);
    cp.wait_for(
        &format!("/api/v1/persistentvolumes/{old_volume}"),
        "the old volume gone",
        LONG,
        |v| v["code"] == 404,
    );
    step(&format!(
        "members on {survivor}, frames exchanged, the old volume gone"
    ));
    drop(nodes);
    // The nodes' binds lived in their own mount namespaces: none reached the host.
    assert_eq!(mount_points_under(&[kubelet_dir]), Vec::<String>::new());
}

/// A pod's name and its node.
type Placed = (String, String);

/// `examples/kubernetes/node-agent.yaml` on both nodes (see the module's comment).
fn node_agents(
    cp: &ControlPlane,
    nodes: &[Option<Node>],
    state: &std::path::Path,
    kubectl: &dyn Fn(&[&str]) -> Output,
) {
    let must = |out: Output| {
        assert!(out.status.success(), "{}", text(&out));
        out
    };
    let on = |name: &str| -> &Node {
        nodes
            .iter()
            .flatten()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no running node {name}"))
    };
    let example = root().join("examples/kubernetes/node-agent.yaml");
    let example = example.to_str().expect("utf-8");
    must(kubectl(&["apply", "-f", example]));
    let ns = "agents";
    let wait_pods = |app: &str, what: &str, ok: &dyn Fn(&[Placed]) -> bool| {
        let start = Instant::now();
        loop {
            let pods = running(cp, ns, app);
            if ok(&pods) {
                return pods;
            }
            assert!(start.elapsed() < LONG, "{what}: {pods:?}\n{}", cp.logs());
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let on_both = |pods: &[Placed]| {
        pods.len() == 2 && NODES.iter().all(|n| pods.iter().any(|(_, at)| at == n))
    };
    let clients = wait_pods("client", "a running client on each node", &on_both);
    let agents = wait_pods("agent", "a running agent on each node", &on_both);
    let agent_on = |agents: &[Placed], node: &str| -> String {
        agents
            .iter()
            .find(|(_, at)| at == node)
            .map(|(name, _)| name.clone())
            .expect("an agent on the node")
    };
    for (client, at) in &clients {
        let agent = agent_on(&agents, at);
        // The agent names the client pod, as the node plugin told it.
        let answered = format!("agent {agent} on {at} answers {client}: hello");
        wait_log(on(at), ns, client, "client", &answered);
        let log = on(at).container_log(ns, client, "client");
        for op in ["create", "unlink", "rename", "bind"] {
            assert!(
                log.contains(&format!("refused {op}: EROFS")),
                "{client} on {at}: {op} not refused with EROFS:\n{log}"
            );
        }
        assert!(!log.contains("ALLOWED"), "{client} on {at}:\n{log}");
        let answers: Vec<&str> = log.lines().filter(|l| l.starts_with("answered")).collect();
        assert!(
            answers
                .iter()
                .all(|l| l.contains(&answered) && l.ends_with(&format!("from {client} on {at}"))),
            "{client} on {at} was answered by another node's agent, or not named:\n{log}"
        );
        // Its node holds its own instance, with the agent's socket in it.
        let instance = on(at).path(&state.join("links").join(ns)).join("agent");
        assert!(
            instance.join("api/agent.sock").exists(),
            "no instance with the agent's socket on {at}"
        );
    }
    let link_path = format!("/apis/ipclink.dev/v1alpha1/namespaces/{ns}/ipclinks/agent");
    // Ready, no one node, and a row per node with its agent and client mounted.
    let link = cp.wait_for(&link_path, "Ready with a row per node", LONG, |v| {
        let rows = v["status"]["nodes"].as_array().cloned().unwrap_or_default();
        v["status"]["phase"] == "Ready"
            && v["status"]["nodeCount"] == 2
            && NODES.iter().all(|n| {
                rows.iter()
                    .any(|r| r["node"] == *n && r["members"] == 2 && r["mounted"] == 2)
            })
    });
    assert!(link["status"]["node"].is_null(), "{link:#}");

    // The agent rolled out: old pods gone, new ones up, while the clients keep asking.
    must(kubectl(&[
        "rollout",
        "restart",
        "daemonset/agent",
        "-n",
        ns,
    ]));
    must(kubectl(&[
        "rollout",
        "status",
        "daemonset/agent",
        "-n",
        ns,
        "--timeout=150s",
    ]));
    let renewed = wait_pods("agent", "a new agent on each node", &|pods| {
        on_both(pods) && pods.iter().all(|p| !agents.contains(p))
    });
    for (client, at) in &clients {
        let agent = agent_on(&renewed, at);
        wait_log(
            on(at),
            ns,
            client,
            "client",
            &format!("agent {agent} on {at} answers {client}: hello"),
        );
        // Once the new agent answered, every request was answered.
        let log = on(at).container_log(ns, client, "client");
        let first = log
            .find(&format!("agent {agent} on {at}"))
            .expect("the new agent's answer");
        assert!(
            !log[first..].contains("not answered"),
            "{client} on {at}: a request went unanswered after the new agent answered:\n{log}"
        );
    }

    // The link deleted with its members: each node's instance goes.
    must(kubectl(&[
        "delete",
        "-f",
        example,
        "--wait=true",
        "--timeout=150s",
    ]));
    for n in NODES {
        let instance = on(n).path(&state.join("links").join(ns)).join("agent");
        let start = Instant::now();
        while instance.exists() {
            assert!(
                start.elapsed() < LONG,
                "the instance on {n} outlived its link"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}
