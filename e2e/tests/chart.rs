//! The Helm chart, the rendered manifests, the dashboard and the alerts, checked by the
//! real tools: helm (lint, template, install, uninstall), kubeconform with schemas taken
//! from our own kube-apiserver, the API server's Pod Security admission, and promtool.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ipclink_testkit::control_plane::ControlPlane;
use ipclink_testkit::require_tool;

use ipclink_testkit::{
    doc_script, output_text as text, path_with, repo_root as root, run_script, script_path,
};

fn tools() -> PathBuf {
    script_path("install-chart-tools")
}

fn run(cmd: &mut Command) -> Output {
    cmd.current_dir(root()).output().expect("run tool")
}

fn helm(args: &[&str]) -> Output {
    run(Command::new(tools().join("helm")).args(args))
}

fn render(extra: &[&str]) -> String {
    let mut args = vec![
        "template",
        "ipclink",
        "charts/ipclink",
        "--namespace",
        "ipclink-system",
        "--kube-version",
        "1.34.0",
    ];
    args.extend_from_slice(extra);
    let out = helm(&args);
    assert!(out.status.success(), "helm template: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_chart_lints_strictly_and_refuses_bad_values_naming_them() {
    let out = helm(&["lint", "--strict", "charts/ipclink"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("0 chart(s) failed"), "{}", text(&out));

    for (set, says) in [
        (
            "node.metricsPort=-1",
            "at '/node/metricsPort': minimum: got -1, want 1",
        ),
        (
            "operator.resources.limits.memory=-64Mi",
            "at '/operator/resources/limits/memory': '-64Mi' does not match pattern",
        ),
        (
            "operator.concurrency=lots",
            "at '/operator/concurrency': got string, want integer",
        ),
        (
            "operator.replicas=11",
            "at '/operator/replicas': maximum: got 11, want 10",
        ),
        (
            "operator.leaseDurationSeconds=1",
            "at '/operator/leaseDurationSeconds': minimum: got 1, want 2",
        ),
        (
            "kubeletDir=var/lib/kubelet",
            "at '/kubeletDir': 'var/lib/kubelet' does not match pattern",
        ),
        ("storageClass.name=Bad_Name", "at '/storageClass/name'"),
        ("image.pullPolicy=Sometimes", "at '/image/pullPolicy'"),
        (
            "nodePlugin.enabled=true",
            "additional properties 'nodePlugin' not allowed",
        ),
        (
            "operator.verbose=true",
            "at '/operator': additional properties 'verbose' not allowed",
        ),
        (
            "metrics.tls.secretName=Bad/Name",
            "at '/metrics/tls/secretName'",
        ),
        ("metrics.readers[0].kind=Robot", "at '/metrics/readers/0"),
    ] {
        let out = helm(&[
            "template",
            "ipclink",
            "charts/ipclink",
            "--kube-version",
            "1.34.0",
            "--set",
            set,
        ]);
        assert!(!out.status.success(), "{set} was accepted");
        assert!(out.stdout.is_empty(), "{set}: something was rendered");
        assert!(text(&out).contains(says), "{set}: {}", text(&out));
    }
    // Optional objects render when asked for.
    let all = render(&[
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.podMonitor.enabled=true",
        "--set",
        "metrics.prometheusRule.enabled=true",
        "--set",
        "networkPolicy.enabled=true",
    ]);
    // Two ServiceMonitors: the operator's, and the node plugins' (a PodMonitor
    // cannot read a token file).
    assert_eq!(all.matches("kind: ServiceMonitor").count(), 2, "{all}");
    assert!(!all.contains("kind: PodMonitor"), "{all}");
    for kind in [
        "kind: PrometheusRule",
        "kind: NetworkPolicy",
        "alert: IpclinkLinkDegraded",
        "alert: IpclinkFifoWriterWithoutReader",
    ] {
        assert!(all.contains(kind), "{kind} missing");
    }
    // No certificate goes unchecked and no token leaves for a peer that was not
    // checked: the operator fills the metrics Secret the chart makes empty, and every
    // client checks against its CA; tokens sent to the node plugins are projected ones
    // for the audience ipclink.dev/metrics, never a ServiceAccount's API token.
    assert!(!all.contains("insecureSkipVerify"), "{all}");
    for needle in [
        "- --metrics-tls-secret=ipclink-system/ipclink-metrics-tls",
        "- --metrics-tls-names=ipclink-node-metrics.ipclink-system.svc,ipclink-operator-metrics.ipclink-system.svc",
        "- --links-server-name=ipclink-node-metrics.ipclink-system.svc",
        "- --links-token-file=/var/run/secrets/ipclink.dev/metrics/token",
        "audience: ipclink.dev/metrics",
        "expirationSeconds: 600",
        "ca: {secret: {name: ipclink-metrics-tls, key: ca.crt}}",
        "serverName: ipclink-operator-metrics.ipclink-system.svc",
        "serverName: ipclink-node-metrics.ipclink-system.svc",
        "bearerTokenFile: /var/run/secrets/ipclink.dev/metrics/token",
        "resourceNames: [\"ipclink-metrics-tls\"]",
    ] {
        assert!(all.contains(needle), "{needle} missing:\n{all}");
    }
    assert!(!all.contains("--metrics-accept-api-audience"), "{all}");
    assert!(
        !all.contains("/var/run/secrets/kubernetes.io/serviceaccount/token"),
        "{all}"
    );
    // The uninstall hook too (rendered with hooks).
    let hook = render(&[]);
    assert!(
        hook.contains("- --links-ca-file=/etc/ipclink/tls/ca.crt"),
        "{hook}"
    );
    let api = render(&["--set", "metrics.acceptApiAudienceTokens=true"]);
    assert_eq!(
        api.matches("- --metrics-accept-api-audience").count(),
        2,
        "{api}"
    );
    // Both monitors bound what one scrape may bring (members decide what is there).
    assert_eq!(all.matches("sampleLimit: 200000").count(), 2, "{all}");
    assert_eq!(
        all.matches("labelValueLengthLimit: 512").count(),
        2,
        "{all}"
    );
    // Publications per node are capped, and the cap is what NodeGetInfo reports.
    assert!(all.contains("- --max-volumes-per-node=256"), "{all}");
    // A certificate Secret is served by both, and checked by the operator and monitors.
    let tls = render(&[
        "--set",
        "metrics.tls.secretName=ipclink-metrics-cert",
        "--set",
        "metrics.serviceMonitor.enabled=true",
        "--set",
        "metrics.podMonitor.enabled=true",
    ]);
    for needle in [
        "- --tls-cert-file=/etc/ipclink/tls/tls.crt",
        "- --links-ca-file=/etc/ipclink/tls/ca.crt",
        "- --links-server-name=ipclink-node-metrics.ipclink-system.svc",
        "secret: {secretName: ipclink-metrics-cert}",
        "ca: {secret: {name: ipclink-metrics-cert, key: ca.crt}}",
        "serverName: ipclink-operator-metrics.ipclink-system.svc",
        "serverName: ipclink-node-metrics.ipclink-system.svc",
    ] {
        assert!(tls.contains(needle), "{needle} missing:\n{tls}");
    }
    assert_eq!(
        tls.matches("secret: {secretName: ipclink-metrics-cert}")
            .count(),
        2
    );
    assert!(!tls.contains("insecureSkipVerify"), "{tls}");
    // cert-manager's Secret: the operator makes no certificate and no Secret of its own.
    assert!(!tls.contains("--metrics-tls-secret"), "{tls}");
    assert!(!tls.contains("name: ipclink-metrics-tls"), "{tls}");
    // Two operator replicas elect a leader and keep one through a drain; one alone
    // needs no budget.
    let default = render(&[]);
    for needle in [
        "kind: PodDisruptionBudget",
        "- --leader-elect\n",
        "- --leader-elect-duration-seconds=15",
        "resources: [\"leases\"]",
    ] {
        assert!(default.contains(needle), "{needle} missing");
    }
    // Uninstall first removes the links, as a hook (never in the plain manifests).
    for needle in [
        "helm.sh/hook: pre-delete",
        "- remove-links\n            - --timeout-seconds=120\n",
    ] {
        assert!(default.contains(needle), "{needle} missing");
    }
    assert!(
        !std::fs::read_to_string(root().join("manifests/install.yaml"))
            .expect("install.yaml")
            .contains("remove-links"),
        "the uninstall hook is in the plain manifests"
    );
    let single = render(&["--set", "operator.replicas=1"]);
    assert!(!single.contains("kind: PodDisruptionBudget"), "{single}");
    // Both monitors keep each series' own namespace (the link's), not the target's.
    assert_eq!(all.matches("honorLabels: true").count(), 2, "{all}");
    let none = render(&[
        "--set",
        "crds.install=false",
        "--set",
        "storageClass.create=false",
        "--set",
        "grafana.dashboard.enabled=false",
    ]);
    for kind in ["CustomResourceDefinition", "StorageClass", "ConfigMap"] {
        assert!(
            !none.contains(&format!("kind: {kind}")),
            "{kind} rendered though disabled"
        );
    }
}

#[test]
fn the_committed_manifests_are_the_chart_rendered() {
    let dir = tempfile::tempdir().expect("temp");
    let fresh = dir.path().join("install.yaml");
    let out = run(Command::new(root().join("scripts/render-manifests")).arg(&fresh));
    assert!(out.status.success(), "{}", text(&out));
    let committed =
        std::fs::read_to_string(root().join("manifests/install.yaml")).expect("install.yaml");
    assert!(
        committed == std::fs::read_to_string(&fresh).expect("rendered"),
        "manifests/install.yaml drifted from the chart; run scripts/render-manifests"
    );
    let crd =
        std::fs::read_to_string(root().join("charts/ipclink/files/crds/ipclinks.ipclink.dev.yaml"))
            .expect("crd");
    assert!(
        committed.contains(crd.trim()),
        "the rendered CRD is the generated one"
    );
}

/// Every PromQL expression of the alert rules and the dashboard, parsed by promtool, and
/// the alerts' unit tests.
#[test]
fn alerts_and_dashboard_queries_pass_promtool() {
    let promtool = require_tool("promtool");
    let rules = root().join("charts/ipclink/files/alerts/ipclink.rules.yaml");
    let out = run(Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&rules));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("SUCCESS: 11 rules found"),
        "{}",
        text(&out)
    );
    let out = run(Command::new(&promtool)
        .args(["test", "rules"])
        .arg(root().join("e2e/tests/fixtures/alerts.test.yaml")));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("SUCCESS"), "{}", text(&out));

    // Grafana variables are replaced by what they stand for, then each query becomes a
    // recording rule, which promtool parses.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("charts/ipclink/files/dashboards/ipclink.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().expect("expr").to_owned());
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(q) = v["query"]
            .as_str()
            .filter(|q| q.starts_with("label_values("))
        {
            // label_values(SELECTOR, label): the selector is PromQL.
            let inner = &q["label_values(".len()..q.rfind(',').expect("label")];
            exprs.push(inner.to_owned());
        }
    }
    assert!(exprs.len() >= 28, "{exprs:?}");
    let families: BTreeSet<&str> = [
        "ipclink_channel_queue_bytes",
        "ipclink_channel_capacity_bytes",
        "ipclink_semaphore_value",
        "ipclink_semaphore_waiters",
        "ipclink_shm_resident_bytes",
        "ipclink_shm_size_bytes",
        "ipclink_link_used_bytes",
        "ipclink_link_limit_bytes",
        "ipclink_socket_backlog_connections",
        "ipclink_channel_holder_info",
        "ipclink_channel_holders",
        "ipclink_channel_depth_unchanged_seconds",
        "ipclink_channel_observed",
        "ipclink_csi_requests_total",
        "ipclink_csi_request_duration_seconds_bucket",
        "ipclink_reconcile_total",
        "ipclink_reconcile_duration_seconds_bucket",
        "ipclink_links",
        "ipclink_channel_queue_messages",
        "ipclink_channel_capacity_messages",
        "ipclink_queue_sent_messages_total",
        "ipclink_queue_received_messages_total",
        "ipclink_queue_oldest_message_timestamp_seconds",
        "ipclink_queue_senders_waiting",
        "ipclink_queue_receivers_waiting",
        "ipclink_queue_recovered_messages_total",
    ]
    .into();
    for f in &families {
        assert!(
            exprs.iter().any(|e| e.contains(f)),
            "the dashboard does not show {f}"
        );
    }
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$namespace", ".*")
            .replace("$link", ".*");
        file.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&e).expect("quote")
        ));
    }
    let dir = tempfile::tempdir().expect("temp");
    let path = dir.path().join("dashboard.rules.yaml");
    std::fs::write(&path, &file).expect("write");
    let out = run(Command::new(&promtool).arg("check").arg("rules").arg(&path));
    assert!(out.status.success(), "{}\n{file}", text(&out));
    // A broken query would be caught: the same check fails on one.
    std::fs::write(
        &path,
        "groups:\n  - name: x\n    rules:\n      - record: x:y\n        expr: sum(rate(x[5m])\n",
    )
    .expect("write");
    let out = run(Command::new(&promtool).arg("check").arg("rules").arg(&path));
    assert!(!out.status.success(), "promtool accepted a broken query");
}

/// JSON schemas, one per kind, from the API server's OpenAPI v2 document (built-in kinds
/// and served CRDs), strict: objects allow no properties the API does not know;
/// int-or-string fields take an integer or a string.
fn schemas_from(cp: &ControlPlane, dir: &Path) -> usize {
    let (code, body) = cp.request("GET", "/openapi/v2", None).expect("openapi");
    assert_eq!(code, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).expect("openapi json");
    let defs = doc["definitions"].as_object().expect("definitions");
    fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                    out.push(r.trim_start_matches("#/definitions/").to_owned());
                }
                m.values().for_each(|x| refs(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    fn strict(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                // OpenAPI v2 writes IntOrString as a string of format int-or-string;
                // the API takes either.
                if m.get("format").and_then(|f| f.as_str()) == Some("int-or-string") {
                    m.insert("type".into(), serde_json::json!(["integer", "string"]));
                }
                let open = m.contains_key("x-kubernetes-preserve-unknown-fields");
                if m.contains_key("properties") && !m.contains_key("additionalProperties") && !open
                {
                    m.insert("additionalProperties".into(), false.into());
                }
                m.values_mut().for_each(strict);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strict),
            _ => {}
        }
    }
    let mut written = 0;
    for (name, def) in defs {
        let Some(gvks) = def["x-kubernetes-group-version-kind"].as_array() else {
            continue;
        };
        let mut closure = BTreeMap::new();
        let mut todo = vec![name.clone()];
        while let Some(n) = todo.pop() {
            if closure.contains_key(&n) {
                continue;
            }
            let d = defs.get(&n).cloned().unwrap_or_default();
            let mut found = Vec::new();
            refs(&d, &mut found);
            todo.extend(found);
            closure.insert(n, d);
        }
        let mut schema =
            serde_json::json!({"$ref": format!("#/definitions/{name}"), "definitions": closure});
        strict(&mut schema);
        for gvk in gvks {
            let (group, version, kind) = (
                gvk["group"].as_str().unwrap_or_default(),
                gvk["version"].as_str().unwrap_or_default(),
                gvk["kind"].as_str().unwrap_or_default().to_lowercase(),
            );
            let group_dir = if group.is_empty() { version } else { group };
            let path = dir.join(group_dir).join(format!("{kind}_{version}.json"));
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, schema.to_string()).expect("schema");
            written += 1;
        }
    }
    written
}

fn kubectl(cp: &ControlPlane, args: &[&str]) -> Output {
    run(Command::new(cp.bin_dir().join("kubectl"))
        .args(args)
        .env("KUBECONFIG", &cp.kubeconfig))
}

#[test]
fn the_chart_installs_into_a_real_apiserver_and_uninstalls_cleanly() {
    let mut cp = ControlPlane::start();
    // Deployments become pods (and meet Pod Security admission) through the
    // controller-manager.
    cp.start_scheduling();
    let tools = tools();
    let dir = tempfile::tempdir().expect("temp");
    let install = root().join("manifests/install.yaml");

    // kubeconform, strict, with schemas from this API server; CRDs' schemas once served.
    let schemas = dir.path().join("schemas");
    let location = format!(
        "{}/{{{{ .Group }}}}/{{{{ .ResourceKind }}}}_{{{{ .ResourceAPIVersion }}}}.json",
        schemas.display()
    );
    let before = schemas_from(&cp, &schemas);
    assert!(before > 50, "{before} schemas");
    let conform = |files: &[&Path]| {
        run(Command::new(tools.join("kubeconform"))
            .args(["-strict", "-summary", "-schema-location", &location])
            .args(files))
    };
    let out = conform(&[&install]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Invalid: 0, Errors: 0, Skipped: 0"),
        "{}",
        text(&out)
    );
    // A field the API does not know is caught (strict), so the check can fail.
    let typo = dir.path().join("typo.yaml");
    std::fs::write(
        &typo,
        std::fs::read_to_string(&install).expect("install").replace(
            "attachRequired: false",
            "attachRequired: false\n  attachRequird: true",
        ),
    )
    .expect("write");
    let out = conform(&[&typo]);
    assert!(
        !out.status.success() && text(&out).contains("attachRequird"),
        "{}",
        text(&out)
    );

    // helm install: every object of the chart is created.
    let out = run(Command::new(tools.join("helm"))
        .args([
            "install",
            "ipclink",
            "charts/ipclink",
            "--namespace",
            "ipclink-system",
            "--create-namespace",
            "--wait=false",
        ])
        .env("KUBECONFIG", &cp.kubeconfig));
    assert!(
        out.status.success(),
        "helm install: {}\n{}",
        text(&out),
        cp.logs()
    );
    let rendered = dir.path().join("rendered.yaml");
    std::fs::write(&rendered, render(&["--no-hooks"])).expect("write");
    let out = kubectl(
        &cp,
        &["get", "-f", rendered.to_str().expect("utf-8"), "-o", "name"],
    );
    assert!(
        out.status.success(),
        "objects missing after install: {}",
        text(&out)
    );
    let created = String::from_utf8_lossy(&out.stdout).lines().count();
    // 17 objects, the metrics reader (a ClusterRole, its binding, a ServiceAccount and
    // the Role that lets one mint its tokens), the node plugins' Lease policy and its
    // binding, and the metrics Secret with the operator's and the plugins' Roles and
    // RoleBindings on it.
    assert_eq!(created, 28, "{}", text(&out));

    // The node plugins' token may create and delete only link claims: their RBAC allows
    // every Lease, the admission policy does not (root on one node must not stop
    // the cluster's controllers by taking their Leases).
    let node_token = cp.service_account_token("ipclink-system", "ipclink-node");
    let as_node = |method: &str, path: &str, body: Option<String>| {
        let mut cmd = Command::new("curl");
        cmd.args(["-sk", "-o", "-", "-w", "\n%{http_code}", "-X", method])
            .arg("-H")
            .arg(format!("Authorization: Bearer {node_token}"))
            .args(["-H", "Content-Type: application/json"]);
        if let Some(b) = body {
            cmd.args(["--data-binary", &b]);
        }
        let out = cmd.arg(format!("{}{path}", cp.url)).output().expect("curl");
        let t = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = t.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse::<u16>().unwrap_or(0), body.to_owned())
    };
    let lease = |ns: &str, name: &str, label: Option<&str>, owner: Option<&str>| {
        let mut meta = serde_json::json!({"name": name, "namespace": ns});
        if let Some(l) = label {
            meta["labels"] = serde_json::json!({"ipclink.dev/link": l});
        }
        if let Some(o) = owner {
            meta["ownerReferences"] = serde_json::json!([{"apiVersion": "ipclink.dev/v1alpha1",
                "kind": "IpcLink", "name": o, "uid": "0b7f6d1e-2f6a-4c39-9d55-3c1a7f0e4b21"}]);
        }
        serde_json::json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": meta, "spec": {"holderIdentity": "node-evil"}})
        .to_string()
    };
    let leases = |ns: &str| format!("/apis/coordination.k8s.io/v1/namespaces/{ns}/leases");
    let out = kubectl(
        &cp,
        &[
            "auth",
            "can-i",
            "delete",
            "leases",
            "-n",
            "kube-system",
            "--as=system:serviceaccount:ipclink-system:ipclink-node",
        ],
    );
    assert_eq!(text(&out).trim(), "yes", "RBAC alone allows it");
    cp.create(
        &leases("kube-system"),
        &lease("kube-system", "kube-scheduler", None, None),
    );
    // The policy acts once the API server has loaded it: wait for its first refusal.
    let start = std::time::Instant::now();
    let controller = lease("kube-system", "kube-controller-manager", None, None);
    loop {
        let (code, body) = as_node("POST", &leases("kube-system"), Some(controller.clone()));
        if code == 403 && body.contains("ipclink-node-leases") {
            break;
        }
        if code == 201 {
            let path = format!("{}/kube-controller-manager", leases("kube-system"));
            cp.request("DELETE", &path, None).expect("delete");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the Lease policy never acted: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for (what, ns, body) in [
        (
            "the controller-manager's Lease",
            "kube-system",
            lease("kube-system", "kube-controller-manager", None, None),
        ),
        (
            "a claim without its label",
            "default",
            lease("default", "ipclink-x", None, Some("x")),
        ),
        (
            "a label naming another link",
            "default",
            lease("default", "ipclink-x", Some("y"), Some("y")),
        ),
        (
            "a claim its link does not own",
            "default",
            lease("default", "ipclink-x", Some("x"), None),
        ),
    ] {
        let (code, body) = as_node("POST", &leases(ns), Some(body));
        assert_eq!(code, 403, "{what}: {body}");
        assert!(body.contains("ipclink-node-leases"), "{what}: {body}");
    }
    let (code, body) = as_node(
        "DELETE",
        &format!("{}/kube-scheduler", leases("kube-system")),
        None,
    );
    assert_eq!(code, 403, "deleting another Lease: {body}");
    let (code, _) = cp
        .request(
            "GET",
            &format!("{}/kube-scheduler", leases("kube-system")),
            None,
        )
        .expect("get");
    assert_eq!(code, 200, "the scheduler's Lease is still there");
    // A link's claim, as the plugin makes it, is created and deleted.
    let (code, body) = as_node(
        "POST",
        &leases("default"),
        Some(lease("default", "ipclink-x", Some("x"), Some("x"))),
    );
    assert_eq!(code, 201, "{body}");
    let (code, body) = as_node("DELETE", &format!("{}/ipclink-x", leases("default")), None);
    assert_eq!(code, 200, "{body}");

    // The examples, with the CRD now served: schema-valid, and admitted in namespaces
    // that enforce the restricted profile (the pods exist: the ReplicaSet controller's
    // creates passed Pod Security admission).
    let served = schemas_from(&cp, &schemas);
    assert!(served > before, "the IpcLink schema is served");
    let examples = [
        root().join("examples/kubernetes/inline.yaml"),
        root().join("examples/kubernetes/persistent.yaml"),
    ];
    let out = conform(&[&examples[0], &examples[1]]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Invalid: 0, Errors: 0, Skipped: 0"),
        "{}",
        text(&out)
    );
    for (file, ns) in examples.iter().zip(["vision-inline", "vision-persistent"]) {
        let out = kubectl(&cp, &["apply", "-f", file.to_str().expect("utf-8")]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            !text(&out).contains("Warning"),
            "PodSecurity warnings: {}",
            text(&out)
        );
        for app in ["camera", "detector"] {
            cp.wait_for(
                &format!("/api/v1/namespaces/{ns}/pods?labelSelector=app={app}"),
                "a pod of the example admitted",
                Duration::from_secs(60),
                |v| v["items"].as_array().is_some_and(|i| i.len() == 1),
            );
        }
        // And enforcement is on: the same namespace refuses a hostIPC pod.
        let out = kubectl(
            &cp,
            &[
                "run",
                "sneaky",
                "-n",
                ns,
                "--image=localhost/ipclink/demo:0.1.0",
                "--overrides",
                r#"{"spec":{"hostIPC":true}}"#,
            ],
        );
        assert!(!out.status.success(), "hostIPC admitted in {ns}");
        assert!(
            text(&out).contains("violates PodSecurity \"restricted:latest\""),
            "{}",
            text(&out)
        );
        let out = kubectl(
            &cp,
            &[
                "delete",
                "-f",
                file.to_str().expect("utf-8"),
                "--wait=false",
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
    }

    // helm uninstall leaves nothing of ours. No kubelet here runs the hook's Job (the
    // in-cluster test runs it): without hooks.
    let out = run(Command::new(tools.join("helm"))
        .args([
            "uninstall",
            "ipclink",
            "--namespace",
            "ipclink-system",
            "--wait",
            "--no-hooks",
        ])
        .env("KUBECONFIG", &cp.kubeconfig));
    assert!(out.status.success(), "{}", text(&out));
    let out = kubectl(
        &cp,
        &[
            "get",
            "-f",
            rendered.to_str().expect("utf-8"),
            "-o",
            "name",
            "--ignore-not-found",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "",
        "left behind after uninstall"
    );
    let out = kubectl(
        &cp,
        &[
            "get",
            "all,sa,cm,csidriver,storageclass,clusterrole,clusterrolebinding,crd",
            "-A",
            "-l",
            "app.kubernetes.io/name=ipclink",
            "-o",
            "name",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "",
        "labelled objects left"
    );
}

#[test]
fn the_readme_kubernetes_section_works_as_written() {
    let mut cp = ControlPlane::start();
    cp.start_scheduling();
    // Images are not needed for the objects to be created (no kubelet here); the image
    // build is exercised by the in-cluster test.
    // No kubelet here: no member mounts the link and no operator pod handles its
    // finalizer, so the delete does not wait, and the uninstall hook's Job cannot run
    // (the in-cluster test runs both for real).
    let script = doc_script(
        "docs/kubernetes.md",
        "kubernetes",
        &["scripts/build-images"],
        &[
            (
                "kubectl delete -f examples/kubernetes/inline.yaml",
                "kubectl delete --wait=false -f examples/kubernetes/inline.yaml",
            ),
            (
                "helm uninstall ipclink --namespace ipclink-system",
                "helm uninstall ipclink --namespace ipclink-system --no-hooks",
            ),
        ],
    );
    let (stdout, _) = run_script(
        "docs/kubernetes.md: the chart",
        &script,
        &[
            ("PATH", &path_with(&[&tools(), cp.bin_dir()])),
            ("KUBECONFIG", cp.kubeconfig.as_os_str()),
        ],
    );
    assert!(stdout.contains("STATUS: deployed"), "{stdout}");
    assert!(
        stdout.contains("ipclink.ipclink.dev/frames created"),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("frames ")),
        "kubectl get ipcl: {stdout}"
    );
    assert!(
        stdout.contains("ipclink.ipclink.dev \"frames\" deleted"),
        "{stdout}"
    );
    assert!(
        stdout.contains("release \"ipclink\" uninstalled"),
        "{stdout}"
    );
}
