//! The operator as a real process against a real control plane.

#![allow(dead_code, unused_imports)]

use std::time::Duration;

use ipclink_testkit::control_plane::ControlPlane;
pub use ipclink_testkit::free_port;
pub use ipclink_testkit::http::{get_ok as http_get, metric};
pub use ipclink_testkit::pods::link;

/// Path of the operator binary under test.
pub const OPERATOR: &str = env!("CARGO_BIN_EXE_ipclink-operator");

pub use ipclink_testkit::operator::Operator;

/// A condition of a link's JSON.
pub fn condition<'a>(link: &'a serde_json::Value, type_: &str) -> &'a serde_json::Value {
    link["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or(&serde_json::Value::Null)
}

/// A pod of `app` that mounts the link `link` (inline, or its claim), optionally bound
/// to `node`, with `runAsUser` and `fsGroup`.
pub fn pod(
    name: &str,
    app: &str,
    link: &str,
    node: Option<&str>,
    uid: i64,
    fs_group: Option<i64>,
    claim: bool,
) -> String {
    let mut p = ipclink_testkit::pods::pod(name, app).run_as(uid, None);
    if let Some(g) = fs_group {
        p = p.fs_group(g);
    }
    p = if claim {
        p.claim(link)
    } else {
        p.inline_link(link)
    };
    if let Some(n) = node {
        p = p.on_node(n);
    }
    p.json()
}

/// Marks a pod Running, as its kubelet would (these tests run none).
pub fn set_running(cp: &ControlPlane, namespace: &str, pod: &str) {
    let (code, text) = cp
        .request(
            "PATCH",
            &format!("/api/v1/namespaces/{namespace}/pods/{pod}/status"),
            Some(r#"{"status":{"phase":"Running"}}"#),
        )
        .expect("pod status");
    assert_eq!(code, 200, "{text}");
}

/// The link path of a namespace.
pub fn links_path(namespace: &str) -> String {
    format!("/apis/ipclink.dev/v1alpha1/namespaces/{namespace}/ipclinks")
}

/// Events about `name` in `namespace`, as (type, reason, note).
pub fn events(cp: &ControlPlane, namespace: &str, name: &str) -> Vec<(String, String, String)> {
    let (_, v) = cp.get_json(&format!(
        "/apis/events.k8s.io/v1/namespaces/{namespace}/events"
    ));
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["regarding"]["name"] == name)
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_owned(),
                e["reason"].as_str().unwrap_or_default().to_owned(),
                e["note"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Seconds to wait for the operator to converge.
pub const CONVERGE: Duration = Duration::from_secs(30);

/// The `ipclink` StorageClass: WaitForFirstConsumer, reclaim Delete.
pub fn storage_class(cp: &ipclink_testkit::control_plane::ControlPlane) {
    cp.create(
        "/apis/storage.k8s.io/v1/storageclasses",
        &serde_json::json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "ipclink"},
            "provisioner": "csi.ipclink.dev",
            "volumeBindingMode": "WaitForFirstConsumer",
            "reclaimPolicy": "Delete",
        })
        .to_string(),
    );
}
