//! The node plugin's metrics endpoint with Kubernetes authentication, against a real API
//! server: HTTPS only; `/metrics` and `/v1/links` answer 401 without a valid token, 403
//! to a ServiceAccount without the right, 200 to one bound to the reader role (also
//! through the header the API server's pod proxy leaves alone); health stays open, also
//! to plain HTTP on the same port; plain HTTP metrics are refused off loopback.

mod common;

use std::path::Path;
use std::process::Command;

use common::{BIN, Plugin, Unmounter, require_root};
use ipclink_testkit::control_plane::ControlPlane;
use ipclink_testkit::free_port;
use ipclink_testkit::http::curl;
use serde_json::json;

#[test]
fn metrics_and_links_need_an_authorized_token() {
    require_root();
    let cp = ControlPlane::start();
    // The reader role the chart makes, bound to one ServiceAccount only.
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
    let nosy = cp.service_account_token("default", "nosy");

    let dir = tempfile::tempdir().expect("temp dir");
    let _unmount = Unmounter(dir.path().to_path_buf());
    let links = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node-links");
    let (port, probes) = (free_port(), free_port());
    let plugin = Plugin::start_with(
        "node",
        dir.path(),
        &[
            "--links-dir",
            links.to_str().expect("utf-8"),
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-auth",
            "kubernetes",
            "--probe-listen",
            &format!("127.0.0.1:{probes}"),
        ],
        &[("KUBECONFIG", cp.kubeconfig.as_os_str())],
    );
    let url = |path: &str| format!("https://127.0.0.1:{port}{path}");
    let bearer = |t: &str| vec![format!("Authorization: Bearer {t}")];
    // The CSI socket is bound before the metrics listener: wait for the latter.
    let start = std::time::Instant::now();
    while curl(&url("/healthz"), &[]).0 != 200 {
        assert!(
            start.elapsed().as_secs() < 20,
            "no metrics endpoint\n{}",
            plugin.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    for path in ["/metrics", "/v1/links"] {
        let (code, body) = curl(&url(path), &[]);
        assert_eq!(code, 401, "{path} without a token: {body}");
        assert!(
            !body.contains("ipclink_") && body.contains("bearer token"),
            "{body}"
        );
        let (code, body) = curl(&url(path), &bearer("not-a-token"));
        assert_eq!(code, 401, "{path} with a forged token: {body}");
        let (code, body) = curl(&url(path), &bearer(&nosy));
        assert_eq!(code, 403, "{path} without the right: {body}");
        assert!(
            body.contains("system:serviceaccount:default:nosy may not get"),
            "{body}"
        );
        assert!(!body.contains("ipclink_"), "{body}");
    }
    let (code, body) = curl(&url("/metrics"), &bearer(&reader));
    assert_eq!(code, 200, "{body}\n{}", plugin.log());
    assert!(
        body.contains("# TYPE ipclink_channel_queue_bytes gauge"),
        "{body}"
    );
    let (code, body) = curl(&url("/v1/links"), &bearer(&reader));
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("{\"links\":"), "{body}");
    // Behind the API server's pod proxy the token comes in its own header.
    let proxied = vec![format!("X-Ipclink-Authorization: Bearer {reader}")];
    assert_eq!(curl(&url("/v1/links"), &proxied).0, 200);
    // Health says nothing about tenants: open, on both listeners.
    assert_eq!(curl(&url("/healthz"), &[]).0, 200);
    assert_eq!(
        curl(&format!("http://127.0.0.1:{probes}/readyz"), &[]).0,
        200
    );
    // Plain HTTP on the TLS port gets health (probes still pointed there) and nothing
    // else, token or not: no token travels in the clear to be accepted.
    let plain = |path: &str| format!("http://127.0.0.1:{port}{path}");
    assert_eq!(curl(&plain("/healthz"), &[]).0, 200);
    for path in ["/metrics", "/v1/links"] {
        let (code, body) = curl(&plain(path), &bearer(&reader));
        assert_eq!(code, 404, "{path} over plain HTTP: {body}");
        assert!(!body.contains("ipclink_"), "{body}");
    }

    // The operator's client: https with a token file, certificate made by the plugin.
    let token = dir.path().join("token");
    std::fs::write(&token, &reader).expect("token");
    let secure = ipclink_runtime::client::Secure {
        tls: ipclink_runtime::tls::client_config(&ipclink_runtime::tls::ServerCheck::None)
            .expect("tls"),
        token_file: Some(token),
    };
    let rt = common::rt();
    let report = rt
        .block_on(ipclink_runtime::client::links(
            &format!("https://127.0.0.1:{port}"),
            Some(&secure),
            std::time::Duration::from_secs(10),
        ))
        .expect("links over https");
    assert!(report.links.is_empty());
    drop(plugin);

    // Without authentication, metrics may only be served on loopback.
    let out = Command::new(BIN)
        .args(["node", "--node-id", "n", "--endpoint"])
        .arg(format!("unix://{}/x.sock", dir.path().display()))
        .args(["--links-dir", links.to_str().expect("utf-8")])
        .args(["--metrics-listen", &format!("0.0.0.0:{}", free_port())])
        .args(["--metrics-auth", "none"])
        .env("IPCLINK_STATE_DIR", dir.path().join("s"))
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--metrics-auth none") && err.contains("loopback"),
        "{err}"
    );
}
