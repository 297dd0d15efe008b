//! Strangers' bearer tokens against the operator's metrics port on a real API server:
//! 2,000 requests with 400 KB tokens, each new, cost it no memory, and an authorized
//! reader keeps getting its metrics meanwhile.

mod common;

use common::*;
use ipclink_testkit::control_plane::ControlPlane;
use ipclink_testkit::operator::Operator;
use serde_json::json;

#[test]
fn strangers_tokens_cost_the_operator_no_memory_and_the_reader_keeps_getting_200() {
    let cp = ControlPlane::start();
    cp.install_ipclink_crd();
    cp.create(
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "ipclink-metrics-reader"},
            "rules": [{"nonResourceURLs": ["/metrics", "/v1/links"], "verbs": ["get"]}]})
        .to_string(),
    );
    cp.create(
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "ipclink-metrics-reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "ipclink-metrics-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": "default"}]})
        .to_string(),
    );
    let reader = cp.service_account_token("default", "prometheus");
    let op = Operator::start(OPERATOR, &cp, &["--metrics-auth", "kubernetes"], &[]);
    let pid = op.pid().expect("running");
    let url = format!("https://127.0.0.1:{}/metrics", op.port);
    let auth = vec![format!("Authorization: Bearer {reader}")];
    let (code, body) = ipclink_testkit::http::curl(&url, &auth);
    assert_eq!(code, 200, "{body}\n{}", op.logs());
    assert!(
        body.contains("ipclink_reconcile_total") || body.contains("ipclink_links"),
        "{body}"
    );

    let flood = ipclink_testkit::http::flood_tokens(op.port, pid, 2000, 400_000, 16, &reader);
    assert_eq!(flood.strangers.values().sum::<u64>(), 2000, "{flood:?}");
    assert!(
        flood.strangers.keys().all(|k| k == "431" || k == "0"),
        "{flood:?}"
    );
    assert!(
        flood.reader.keys().all(|&c| c == 200),
        "the reader got {:?}\n{}",
        flood.reader,
        op.logs()
    );
    let growth = flood.rss_peak.saturating_sub(flood.rss_before);
    assert!(growth <= 16 << 20, "RSS grew by {growth} bytes ({flood:?})");
    eprintln!(
        "400 KB tokens: {:?}; reader {:?}; RSS {} -> {} KiB",
        flood.strangers,
        flood.reader,
        flood.rss_before >> 10,
        flood.rss_peak >> 10
    );
}
