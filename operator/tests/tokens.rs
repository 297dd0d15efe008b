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
    let reader = cp.metrics_reader("default", "prometheus");
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

/// The Secret with the release's metrics certificate: the chart makes it empty, the
/// operator fills it once (a restart keeps it), serves it, and fills it again with the
/// same certificate when it is emptied.
#[test]
fn the_operator_fills_the_metrics_secret_serves_it_and_keeps_it() {
    let cp = ControlPlane::start();
    cp.install_ipclink_crd();
    cp.create(
        "/api/v1/namespaces/default/secrets",
        &json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "metrics-tls"}})
        .to_string(),
    );
    let secret = "/api/v1/namespaces/default/secrets/metrics-tls";
    let names = "ipclink-node-metrics.x.svc,ipclink-operator-metrics.x.svc";
    let args = [
        "--metrics-auth",
        "kubernetes",
        "--metrics-tls-secret",
        "default/metrics-tls",
        "--metrics-tls-names",
        names,
        "--metrics-tls-check-seconds",
        "1",
    ];
    let data = |cp: &ControlPlane| cp.get_json(secret).1["data"].clone();
    let first = {
        let op = Operator::start(OPERATOR, &cp, &args, &[]);
        let d = data(&cp);
        assert!(d["ca.crt"].is_string() && d["tls.crt"].is_string() && d["tls.key"].is_string());
        // It serves that certificate: a client checking the CA for the operator's name
        // completes the handshake (its health needs no token).
        let pem = ipclink_testkit::unbase64(d["ca.crt"].as_str().expect("ca"));
        let dir = tempfile::tempdir().expect("dir");
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, pem).expect("ca");
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&ca)
            .args([
                "--resolve",
                &format!("ipclink-operator-metrics.x.svc:{}:127.0.0.1", op.port),
            ])
            .arg(format!(
                "https://ipclink-operator-metrics.x.svc:{}/healthz",
                op.port
            ))
            .output()
            .expect("curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{}", op.logs());
        d
    };
    // Another start keeps what is there.
    let op = Operator::start(OPERATOR, &cp, &args, &[]);
    assert_eq!(data(&cp), first);
    // Emptied (a forced upgrade, a hand edit): filled again with the same certificate.
    let (code, text) = cp
        .request(
            "PUT",
            secret,
            Some(
                &json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": "metrics-tls"}})
                .to_string(),
            ),
        )
        .expect("empty it");
    assert_eq!(code, 200, "{text}");
    cp.wait_for(
        secret,
        "the Secret filled again",
        std::time::Duration::from_secs(30),
        |v| v["data"] == first,
    );
    drop(op);
}
