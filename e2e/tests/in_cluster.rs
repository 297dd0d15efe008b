//! The whole product in a real cluster: kube-apiserver, kube-scheduler and
//! kube-controller-manager, a kubelet with containerd, runc and CNI, the images built
//! from our binaries by `scripts/build-images`, the chart installed by helm. The node
//! plugin runs as the chart's DaemonSet pod and registers with the kubelet; the
//! operator runs as its Deployment; both examples of `examples/kubernetes` (inline and
//! persistent) run their demo producer and consumer in restricted namespaces until the
//! links are Ready with depths in status. The chart is installed at its previous
//! release and upgraded under the running links; `helm uninstall` is refused while
//! members run, and once they are gone it removes everything, leaving no mount behind.

use std::process::{Command, Output};
use std::time::Duration;

use ipclink_testkit::control_plane::ControlPlane;
use ipclink_testkit::node::Node;
use ipclink_testkit::prometheus::Prometheus;

const LONG: Duration = Duration::from_secs(120);
/// The last commit of chart 0.1.0 (one operator replica, no leader election): the
/// release `helm upgrade` starts from.
const PREVIOUS_CHART: &str = "af27f73";
/// The namespaces of `examples/kubernetes`.
const EXAMPLES: [&str; 2] = ["vision-inline", "vision-persistent"];
/// The kubelet's node name, as EKS names nodes: the chart passes `spec.nodeName` to the
/// node plugin, dots and all.
const NODE: &str = "ip-10-0-1-23.us-west-2.compute.internal";

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

/// One field (a JSON pointer) of each of the two running operator replicas.
fn operator_pods(cp: &ControlPlane, field: &str) -> Vec<String> {
    let (_, v) = cp.get_json(
        "/api/v1/namespaces/ipclink-system/pods?labelSelector=app.kubernetes.io/component=operator",
    );
    let found: Vec<String> = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        // A replaced replica may still be terminating.
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| p.pointer(field).and_then(|f| f.as_str()).map(str::to_owned))
        .collect();
    assert_eq!(found.len(), 2, "two operator replicas with {field}: {v:#}");
    found
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
    let node = Node::start(&cp, NODE);
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

    // The previous chart release first (one operator, no leader election); upgraded to
    // this one once the examples run.
    let previous = tempfile::tempdir().expect("temp dir");
    let out = run(Command::new("sh").arg("-c").arg(format!(
        "git archive {PREVIOUS_CHART} charts/ipclink | tar -x -C {}",
        previous.path().display()
    )));
    assert!(out.status.success(), "the previous chart: {}", text(&out));
    let previous_chart = previous.path().join("charts/ipclink");
    let values = [
        "--set".to_owned(),
        format!("kubeletDir={}", kubelet_dir.display()),
        "--set".to_owned(),
        format!("node.stateDir={}/ipclink-state", kubelet_dir.display()),
        "--set".to_owned(),
        "image.pullPolicy=Never".to_owned(),
        "--set".to_owned(),
        "operator.depthIntervalSeconds=2".to_owned(),
        "--set".to_owned(),
        "node.gcIntervalSeconds=2".to_owned(),
    ];
    let out = run(Command::new(tools.join("helm"))
        .args(["install", "ipclink"])
        .arg(&previous_chart)
        .args(["--namespace", "ipclink-system", "--create-namespace"])
        .args(&values));
    assert!(out.status.success(), "helm install: {}", text(&out));

    // The DaemonSet's pod registers the driver with the kubelet; the operator runs.
    let csinode = node.wait_for_driver(&cp, "csi.ipclink.dev", LONG);
    assert_eq!(
        csinode["spec"]["drivers"][0]["topologyKeys"][0],
        "topology.ipclink.dev/node"
    );
    let (_, n) = cp.get_json(&format!("/api/v1/nodes/{NODE}"));
    assert_eq!(
        n["metadata"]["labels"]["topology.ipclink.dev/node"], NODE,
        "{n:#}"
    );
    let operator_available = |replicas: u64, during: &dyn Fn()| {
        let start = std::time::Instant::now();
        loop {
            let (_, d) =
                cp.get_json("/apis/apps/v1/namespaces/ipclink-system/deployments/ipclink-operator");
            let status = &d["status"];
            if status["availableReplicas"] == replicas
                && status["updatedReplicas"] == replicas
                && status["replicas"] == replicas
            {
                break;
            }
            during();
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
    };
    operator_available(1, &|| {});

    for (file, ns) in [
        ("inline.yaml", "vision-inline"),
        ("persistent.yaml", "vision-persistent"),
    ] {
        let path = root().join("examples/kubernetes").join(file);
        let out = kubectl(&["apply", "-f", path.to_str().expect("utf-8")]);
        assert!(out.status.success(), "{}", text(&out));
        // What a user or a GitOps tool waits on: the Ready condition.
        let out = kubectl(&[
            "wait",
            "ipcl/frames",
            "-n",
            ns,
            "--for=condition=Ready",
            "--timeout=120s",
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let link = format!("/apis/ipclink.dev/v1alpha1/namespaces/{ns}/ipclinks/frames");
        // Depths come after the upgrade: this image reads them over HTTPS with a token
        // the previous chart's RBAC cannot review.
        let v = cp.wait_for(&link, "the example link Ready", LONG, |v| {
            v["status"]["phase"] == "Ready"
        });
        assert_eq!(v["status"]["node"], NODE, "{v:#}");
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

    // helm upgrade to this chart while both links run: they stay Ready throughout, and
    // no member restarts.
    let members = |ns: &str| -> Vec<(String, serde_json::Value)> {
        let (_, v) = cp.get_json(&format!("/api/v1/namespaces/{ns}/pods"));
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
                    p["status"]["containerStatuses"][0]["restartCount"].clone(),
                )
            })
            .collect()
    };
    let before: Vec<_> = EXAMPLES.iter().map(|ns| members(ns)).collect();
    let both_ready = || {
        for ns in EXAMPLES {
            let (_, l) = cp.get_json(&format!(
                "/apis/ipclink.dev/v1alpha1/namespaces/{ns}/ipclinks/frames"
            ));
            assert_eq!(
                l["status"]["phase"], "Ready",
                "{ns} during the upgrade: {:#}",
                l["status"]
            );
        }
    };
    // This chart's metrics are HTTPS for an authorized token: Prometheus's
    // ServiceAccount is made a reader (the previous chart had no such value).
    let prometheus_token = cp.metrics_token("default", "prometheus");
    let out = run(Command::new(tools.join("helm"))
        .args([
            "upgrade",
            "ipclink",
            "charts/ipclink",
            "--namespace",
            "ipclink-system",
        ])
        .args(&values)
        .args([
            "--set",
            "metrics.readers[0].kind=ServiceAccount,metrics.readers[0].name=prometheus,metrics.readers[0].namespace=default",
        ]));
    assert!(out.status.success(), "helm upgrade: {}", text(&out));
    operator_available(2, &both_ready);
    both_ready();
    // The operator reads the node plugin's depths over HTTPS with its token.
    for ns in EXAMPLES {
        let link = format!("/apis/ipclink.dev/v1alpha1/namespaces/{ns}/ipclinks/frames");
        cp.wait_for(&link, "the example link Ready with depths", LONG, |v| {
            v["status"]["phase"] == "Ready"
                && v["status"]["channels"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["kind"] == "semaphore" && c["value"].is_number())
                })
        });
    }
    let after: Vec<_> = EXAMPLES.iter().map(|ns| members(ns)).collect();
    assert_eq!(before, after, "member pods were replaced or restarted");

    // Two replicas: one holds the leader Lease (the chart's Role lets it), the other
    // stands by, and the disruption budget lets a drain take one of them.
    let names = operator_pods(&cp, "/metadata/name");
    let start = std::time::Instant::now();
    loop {
        let (_, lease) = cp.get_json(
            "/apis/coordination.k8s.io/v1/namespaces/ipclink-system/leases/ipclink-operator",
        );
        let (_, pdb) = cp.get_json(
            "/apis/policy/v1/namespaces/ipclink-system/poddisruptionbudgets/ipclink-operator",
        );
        let holder = lease["spec"]["holderIdentity"].as_str().unwrap_or_default();
        if names.iter().any(|n| n == holder) && pdb["status"]["disruptionsAllowed"] == 1 {
            break;
        }
        assert!(
            start.elapsed() < LONG,
            "no leader among {names:?}, or the budget does not allow one disruption: {lease:#} {pdb:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // What the node plugin sees inside the member pods (it has the host's pid
    // namespace): camera and detector hold the example's region and semaphores.
    let ns = "vision-inline";
    let camera = pod_name(&cp, ns, "camera");
    let detector = pod_name(&cp, ns, "detector");
    let pod_ip = |selector: &str| -> String {
        let (_, v) = cp.get_json(&format!(
            "/api/v1/namespaces/ipclink-system/pods?labelSelector={selector}"
        ));
        v["items"][0]["status"]["podIP"]
            .as_str()
            .expect("pod IP")
            .to_owned()
    };
    let plugin_ip = pod_ip("app.kubernetes.io/component=node-plugin");
    let operator_ips = operator_pods(&cp, "/status/podIP");

    // Their metrics answer no one without an authorized token.
    for target in [
        format!("{plugin_ip}:9809"),
        format!("{}:9810", operator_ips[0]),
    ] {
        let (code, body) = ipclink_testkit::http::curl(&format!("https://{target}/metrics"), &[]);
        assert_eq!(code, 401, "{target}: {body}");
    }
    // A real Prometheus scrapes the node plugin and the operator as the chart's monitors
    // do (https, its ServiceAccount's token, honor_labels): each series once, under the
    // link's own namespace.
    let prom_dir = tempfile::tempdir().expect("temp dir");
    // The CA it checks them against is the one the operator put in the chart's Secret.
    let (_, secret) = cp.get_json("/api/v1/namespaces/ipclink-system/secrets/ipclink-metrics-tls");
    let ca = secret["data"]["ca.crt"]
        .as_str()
        .expect("the operator filled ca.crt");
    let ca = String::from_utf8(ipclink_testkit::unbase64(ca)).expect("pem");
    let prom = Prometheus::start_secure(
        prom_dir.path(),
        &[
            ("node-plugin", format!("{plugin_ip}:9809")),
            ("operator", format!("{}:9810", operator_ips[0])),
            ("operator", format!("{}:9810", operator_ips[1])),
        ],
        &prometheus_token,
        &ca,
        &[
            ("node-plugin", "ipclink-node-metrics.ipclink-system.svc"),
            ("operator", "ipclink-operator-metrics.ipclink-system.svc"),
        ],
    );
    let start = std::time::Instant::now();
    let holders = format!(
        "ipclink_channel_holder_info{{namespace=\"{ns}\",channel=\"frames\",pod=~\"{ns}/({camera}|{detector})\"}}"
    );
    while prom.query("up == 1").len() < 3
        || prom.query(&holders).len() < 2
        || prom
            .query(&format!(
                "ipclink_link_info{{namespace=\"{ns}\",phase=\"Ready\",node=\"{NODE}\"}}"
            ))
            .is_empty()
    {
        assert!(
            start.elapsed() < LONG,
            "Prometheus never saw the three targets, the holders and the link: up {:?}, holders {:?}",
            prom.query("up"),
            prom.query("ipclink_channel_holder_info")
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // Aggregation drops the metric name: keep it as a label to count each series. Each
    // operator replica has its own process families (leader, status writes,
    // reconciles); every other series must come from one target only.
    let twice = prom.query(
        r#"count without (instance, job) (label_replace({__name__=~"ipclink_.+",__name__!~"ipclink_(operator_leader|status_writes_total|reconcile_.+)"}, "name", "$1", "__name__", "(.+)")) > 1"#,
    );
    let all = prom.query(
        r#"count without (instance, job) (label_replace({__name__=~"ipclink_.+"}, "name", "$1", "__name__", "(.+)"))"#,
    );
    assert!(all.len() > 20, "too few series to tell: {all:?}");
    assert!(twice.is_empty(), "series exported twice: {twice:?}");
    let jobs = prom
        .query(r#"count by (job) ({__name__=~"ipclink_(channel|semaphore|shm|fifo|socket)_.+"})"#);
    assert_eq!(
        jobs.len(),
        1,
        "channel families from more than the node plugin: {jobs:?}"
    );
    assert_eq!(jobs[0]["metric"]["job"], "node-plugin", "{jobs:?}");
    drop(prom);

    // kubectl ipclink, as docs/kubernetes.md runs it: the node plugins' view through the API
    // server's pod proxy.
    let script = ipclink_testkit::doc_script(
        "docs/kubernetes.md",
        "kubectl-ipclink",
        &["cargo build"],
        &[(
            "$PWD/target/release",
            ipclink_testkit::static_binary(&images, "kubectl-ipclink")
                .parent()
                .and_then(|p| p.to_str())
                .expect("utf-8"),
        )],
    );
    let path = format!(
        "{}:{}",
        cp.bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (out, _) = ipclink_testkit::run_script(
        "docs/kubernetes.md: kubectl ipclink",
        &script,
        &[
            ("KUBECONFIG", cp.kubeconfig.as_os_str()),
            ("PATH", std::ffi::OsStr::new(&path)),
        ],
    );
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let frames = rows
        .iter()
        .find(|r| r.len() >= 10 && r[..4] == ["vision-inline", "frames", "frames", "shm"])
        .unwrap_or_else(|| panic!("no top row of the region in\n{out}"));
    // NODE, DEPTH (a region has none), CAPACITY, READERS, WRITERS, then the holders.
    // The detector (the demo's consumer) reads the ring read-only.
    assert_eq!(frames[4..9], [NODE, "-", "1MiB", "2", "1"], "{out}");
    let holders = frames[9..].join(" ");
    assert!(
        holders.contains(&format!("{camera}(rwm)")) && holders.contains(&format!("{detector}(rm)")),
        "{out}"
    );
    assert!(
        rows.iter()
            .any(|r| r.len() >= 3 && r[..3] == ["frames", "mapper", camera.as_str()]),
        "describe names the holders:\n{out}"
    );
    for want in [
        "Phase:      Ready",
        format!("Node:       {NODE}").as_str(),
        "Scheduled",
        "Events:",
    ] {
        assert!(out.contains(want), "no {want:?} in\n{out}");
    }

    // Memory: the node plugin's pod is held to the chart's 128Mi; a link with a 512Mi
    // region is charged to the member pod that mounts it first (its limit, 1Gi, covers
    // it), and the plugin neither holds the pages nor restarts.
    cp.create(
        &format!("/apis/ipclink.dev/v1alpha1/namespaces/{ns}/ipclinks"),
        &ipclink_testkit::pods::link(
            ns,
            "big",
            serde_json::json!({
                "sizeLimit": "600Mi",
                "members": [{"name": "m", "podSelector": {"matchLabels": {"app": "big"}}}],
                "channels": [{"name": "frames", "kind": "shm", "size": "512Mi", "mode": "0666"}]
            }),
        ),
    );
    let mut member: serde_json::Value = serde_json::from_str(
        &ipclink_testkit::pods::pod("big-member", "big")
            .runs(ipclink_testkit::node::PAUSE_IMAGE, &[])
            .run_as(1000, Some(1000))
            .restricted()
            .inline_link("big")
            .json(),
    )
    .expect("pod json");
    member["spec"]["containers"][0]["resources"] = serde_json::json!({"limits": {"memory": "1Gi"}});
    cp.create(
        &format!("/api/v1/namespaces/{ns}/pods"),
        &member.to_string(),
    );
    let v = cp.wait_for(
        &format!("/api/v1/namespaces/{ns}/pods/big-member"),
        "the member running",
        LONG,
        |v| v["status"]["phase"] == "Running",
    );
    let shmem = |uid: &str| -> u64 {
        ["", "burstable/", "besteffort/"]
            .iter()
            .map(|q| {
                std::path::Path::new("/sys/fs/cgroup/memory/kubepods")
                    .join(format!("{q}pod{uid}/memory.stat"))
            })
            .find_map(|p| std::fs::read_to_string(p).ok())
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("total_shmem "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("no memory cgroup of pod {uid}"))
    };
    let member_uid = v["metadata"]["uid"].as_str().expect("uid").to_owned();
    assert!(
        shmem(&member_uid) >= 512 << 20,
        "the member holds {} bytes",
        shmem(&member_uid)
    );
    let plugin = pod_name_any(
        &cp,
        "ipclink-system",
        "app.kubernetes.io/component=node-plugin",
    );
    let (_, p) = cp.get_json(&format!("/api/v1/namespaces/ipclink-system/pods/{plugin}"));
    assert_eq!(
        p["spec"]["containers"][0]["resources"]["limits"]["memory"],
        "128Mi"
    );
    assert_eq!(
        p["status"]["containerStatuses"][0]["restartCount"], 0,
        "{p:#}"
    );
    let plugin_uid = p["metadata"]["uid"].as_str().expect("uid").to_owned();
    assert!(
        shmem(&plugin_uid) < 16 << 20,
        "the plugin holds {} bytes",
        shmem(&plugin_uid)
    );
    let out = kubectl(&[
        "delete",
        "-n",
        ns,
        "pod/big-member",
        "ipclink/big",
        "--wait=true",
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // helm uninstall while the members run: the chart's hook refuses and removes
    // nothing; its log names each link and pod.
    let uninstall = || {
        run(Command::new(tools.join("helm")).args([
            "uninstall",
            "ipclink",
            "--namespace",
            "ipclink-system",
            "--wait",
            "--timeout=5m",
        ]))
    };
    let out = uninstall();
    assert!(!out.status.success(), "uninstalled under running members");
    let hook = pod_name_any(&cp, "ipclink-system", "job-name=ipclink-remove-links");
    let log = node.container_log("ipclink-system", &hook, "remove-links");
    for needle in [
        "Nothing was removed",
        "vision-inline/frames (pods ",
        "vision-persistent/frames (pods ",
    ] {
        assert!(
            log.contains(needle),
            "{needle}: {log}\nhelm: {}\n{}",
            text(&out),
            text(&kubectl(&[
                "get",
                "jobs,pods",
                "-n",
                "ipclink-system",
                "-o",
                "wide"
            ]))
        );
    }
    both_ready();
    operator_available(2, &both_ready);

    // The members gone, the links kept: uninstall deletes the links, waits until the
    // operator has cleaned each up (claim, volume), then removes the chart; nothing of
    // ipclink is left: no IpcLink, CRD, volume, finalizer, mount or link tmpfs.
    for ns in EXAMPLES {
        let out = kubectl(&[
            "delete",
            "deployments",
            "--all",
            "-n",
            ns,
            "--wait=true",
            "--timeout=150s",
        ]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let start = std::time::Instant::now();
    while !mounts_containing("kubernetes.io~csi").is_empty() {
        assert!(
            start.elapsed() < LONG,
            "member volumes left mounted: {:?}",
            mounts_containing(&kubelet_dir.display().to_string())
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        mounts_containing("ipclink-state/links/").len(),
        2,
        "the two links live on without members"
    );
    let out = uninstall();
    assert!(out.status.success(), "{}", text(&out));
    // The hook waited for the node plugin to let go of both links before the chart's
    // objects went.
    assert!(
        mounts_containing("ipclink-state/links/").is_empty(),
        "{:?}",
        mounts_containing("ipclink-state/links/")
    );
    let (code, _) =
        cp.get_json("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/ipclinks.ipclink.dev");
    assert_eq!(code, 404, "the CRD is left");
    let (_, pvs) = cp.get_json("/api/v1/persistentvolumes");
    assert_eq!(pvs["items"].as_array().map(Vec::len), Some(0), "{pvs:#}");
    for ns in EXAMPLES {
        let (_, claims) = cp.get_json(&format!("/api/v1/namespaces/{ns}/persistentvolumeclaims"));
        assert_eq!(
            claims["items"].as_array().map(Vec::len),
            Some(0),
            "{claims:#}"
        );
    }
    let (_, jobs) = cp.get_json("/apis/batch/v1/namespaces/ipclink-system/jobs");
    assert_eq!(jobs["items"].as_array().map(Vec::len), Some(0), "{jobs:#}");
    let start = std::time::Instant::now();
    while !mounts_containing("ipclink-state").is_empty() {
        assert!(
            start.elapsed() < LONG,
            "left mounted after uninstall: {:?}",
            mounts_containing(&kubelet_dir.display().to_string())
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(node);
}
