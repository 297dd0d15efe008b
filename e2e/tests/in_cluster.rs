//! The whole product in a real cluster: kube-apiserver, kube-scheduler and
//! kube-controller-manager, a kubelet with containerd, runc and CNI, the images built
//! from our binaries by `scripts/build-images`, the chart installed by helm. The node
//! plugin runs as the chart's DaemonSet pod and registers with the kubelet; the
//! operator runs as its Deployment; both examples of `manifests/examples` (inline and
//! persistent) run their demo producer and consumer in restricted namespaces until the
//! links are Ready with depths in status; deleting everything leaves no mount behind.

use std::process::{Command, Output};
use std::time::Duration;

use ipclink_testkit::control_plane::ControlPlane;
use ipclink_testkit::node::Node;

const LONG: Duration = Duration::from_secs(120);

use ipclink_testkit::mounts::mounts_containing;
use ipclink_testkit::{output_text as text, repo_root as root, script_path as script};

fn pod_name(cp: &ControlPlane, ns: &str, app: &str) -> String {
    let v = cp.wait_for(
        &format!("/api/v1/namespaces/{ns}/pods?labelSelector=app={app}"),
        "a running pod",
        LONG,
        |v| {
            v["items"]
                .as_array()
                .is_some_and(|i| i.iter().any(|p| p["status"]["phase"] == "Running"))
        },
    );
    v["items"]
        .as_array()
        .and_then(|i| i.iter().find(|p| p["status"]["phase"] == "Running"))
        .and_then(|p| p["metadata"]["name"].as_str())
        .expect("pod name")
        .to_owned()
}

fn pod_name_any(cp: &ControlPlane, ns: &str, selector: &str) -> String {
    let (_, v) = cp.get_json(&format!(
        "/api/v1/namespaces/{ns}/pods?labelSelector={selector}"
    ));
    v["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn the_chart_runs_the_examples_on_a_real_node() {
    let images = script("build-images");
    let tools = script("install-chart-tools");
    let mut cp = ControlPlane::start_in_cluster();
    cp.start_scheduling();
    let node = Node::start(&cp, "node-1");
    for archive in ["ipclink.tar", "demo.tar"] {
        node.import_archive(&images.join(archive));
    }
    let kubelet_dir = node.root_dir();
    let run = |cmd: &mut Command| -> Output {
        cmd.current_dir(root())
            .env("KUBECONFIG", &cp.kubeconfig)
            .output()
            .expect("run")
    };
    let kubectl = |args: &[&str]| run(Command::new(cp.bin_dir().join("kubectl")).args(args));

    let out = run(Command::new(tools.join("helm")).args([
        "install",
        "ipclink",
        "charts/ipclink",
        "--namespace",
        "ipclink-system",
        "--create-namespace",
        "--set",
        &format!("kubeletDir={}", kubelet_dir.display()),
        "--set",
        &format!("node.stateDir={}/ipclink-state", kubelet_dir.display()),
        "--set",
        "image.pullPolicy=Never",
        "--set",
        "operator.depthIntervalSeconds=2",
        "--set",
        "node.gcIntervalSeconds=2",
    ]));
    assert!(out.status.success(), "helm install: {}", text(&out));

    // The DaemonSet's pod registers the driver with the kubelet; the operator runs.
    let csinode = node.wait_for_driver(&cp, "csi.ipclink.dev", LONG);
    assert_eq!(
        csinode["spec"]["drivers"][0]["topologyKeys"][0],
        "topology.ipclink.dev/node"
    );
    let (_, n) = cp.get_json("/api/v1/nodes/node-1");
    assert_eq!(
        n["metadata"]["labels"]["topology.ipclink.dev/node"], "node-1",
        "{n:#}"
    );
    let start = std::time::Instant::now();
    while cp
        .get_json("/apis/apps/v1/namespaces/ipclink-system/deployments/ipclink-operator")
        .1["status"]["availableReplicas"]
        != 1
    {
        if start.elapsed() > LONG {
            let out = kubectl(&["get", "pods", "-A", "-o", "wide"]);
            let events = kubectl(&["get", "events", "-n", "ipclink-system"]);
            let pod = pod_name_any(
                &cp,
                "ipclink-system",
                "app.kubernetes.io/component=operator",
            );
            let plugin = pod_name_any(
                &cp,
                "ipclink-system",
                "app.kubernetes.io/component=node-plugin",
            );
            panic!(
                "the operator is not available:\n{}\n{}\n--- operator log ---\n{}\n--- node plugin log ---\n{}\n{}",
                text(&out),
                text(&events),
                node.container_log("ipclink-system", &pod, "operator"),
                node.container_log("ipclink-system", &plugin, "csi"),
                node.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    for (file, ns) in [
        ("inline.yaml", "vision-inline"),
        ("persistent.yaml", "vision-persistent"),
    ] {
        let path = root().join("manifests/examples").join(file);
        let out = kubectl(&["apply", "-f", path.to_str().expect("utf-8")]);
        assert!(out.status.success(), "{}", text(&out));
        let link = format!("/apis/ipclink.dev/v1alpha1/namespaces/{ns}/ipclinks/frames");
        let v = cp.wait_for(&link, "the example link Ready with depths", LONG, |v| {
            v["status"]["phase"] == "Ready"
                && v["status"]["channels"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["kind"] == "semaphore"))
        });
        assert_eq!(v["status"]["node"], "node-1", "{v:#}");
        for app in ["camera", "detector"] {
            let pod = pod_name(&cp, ns, app);
            let start = std::time::Instant::now();
            let want = if app == "camera" {
                "produce: 1000 frames"
            } else {
                "consume: 1000 frames"
            };
            while !node.container_log(ns, &pod, app).contains(want) {
                assert!(
                    start.elapsed() < LONG,
                    "{ns}/{pod}: no {want:?} in\n{}",
                    node.container_log(ns, &pod, app)
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        if ns == "vision-persistent" {
            let (_, pvc) = cp.get_json(&format!(
                "/api/v1/namespaces/{ns}/persistentvolumeclaims/frames"
            ));
            assert_eq!(pvc["status"]["phase"], "Bound", "{pvc:#}");
        }
    }

    // Removing the examples (their links wait for the members to go) and the chart
    // leaves no volume mounted and no link tmpfs.
    for file in ["inline.yaml", "persistent.yaml"] {
        let path = root().join("manifests/examples").join(file);
        let out = kubectl(&[
            "delete",
            "-f",
            path.to_str().expect("utf-8"),
            "--wait=true",
            "--timeout=150s",
        ]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let start = std::time::Instant::now();
    while !mounts_containing("kubernetes.io~csi").is_empty()
        || !mounts_containing("ipclink-state/links/").is_empty()
    {
        assert!(
            start.elapsed() < LONG,
            "left mounted: {:?}",
            mounts_containing(&kubelet_dir.display().to_string())
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = run(Command::new(tools.join("helm")).args([
        "uninstall",
        "ipclink",
        "--namespace",
        "ipclink-system",
        "--wait",
    ]));
    assert!(out.status.success(), "{}", text(&out));
    drop(node);
}
