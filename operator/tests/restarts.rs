//! Faults on a real kube-apiserver: the operator killed between creating a claim and
//! writing status converges without duplicates; Cleanup works when Apply never ran; the
//! API server restarted under a running operator is relisted; SIGTERM stops it cleanly.

mod common;

use std::time::Duration;

use common::*;
use ipclink_testkit::control_plane::ControlPlane;
use serde_json::json;

const NS: &str = "vision";

fn spec(channels: usize) -> serde_json::Value {
    let channels: Vec<_> = (0..channels)
        .map(|i| json!({"name": format!("c{i}"), "kind": "fifo", "mode": "0666"}))
        .collect();
    json!({
        "claim": {},
        "members": [{"name": "app", "podSelector": {"matchLabels": {"app": "x"}}}],
        "channels": channels,
    })
}

#[test]
fn the_operator_converges_after_crashes_and_an_apiserver_restart() {
    let mut cp = ControlPlane::start();
    cp.install_ipclink_crd();
    cp.namespace(NS);
    storage_class(&cp);
    let links = links_path(NS);

    // Cleanup when Apply never ran: a link that carries the finalizer and is deleted
    // before any operator saw it.
    let mut early: serde_json::Value =
        serde_json::from_str(&link(NS, "early", spec(1))).expect("json");
    early["metadata"]["finalizers"] = json!(["ipclink.dev/cleanup"]);
    cp.create(&links, &early.to_string());
    let (code, text) = cp
        .request("DELETE", &format!("{links}/early"), None)
        .expect("delete");
    assert_eq!(code, 200, "{text}");
    assert_eq!(
        cp.get_json(&format!("{links}/early")).0,
        200,
        "held by the finalizer"
    );

    // Killed right after creating the claim, before any status was written.
    let mut crashing =
        Operator::start(OPERATOR, &cp, &[], &[("IPCLINK_FAULT", "exit-after-claim")]);
    cp.create(&links, &link(NS, "frames", spec(1)));
    let status = crashing.wait_exit(Duration::from_secs(30));
    assert!(
        !status.success(),
        "the fault hook must kill the operator: {status:?}"
    );
    assert!(
        crashing.logs().contains("fault injection"),
        "{}",
        crashing.logs()
    );
    let claim_path = format!("/api/v1/namespaces/{NS}/persistentvolumeclaims/frames");
    let (code, claim) = cp.get_json(&claim_path);
    assert_eq!(
        code, 200,
        "the claim was created before the crash: {claim:#}"
    );
    let (_, frames) = cp.get_json(&format!("{links}/frames"));
    assert!(
        frames["status"].is_null(),
        "no status before the crash: {frames:#}"
    );
    drop(crashing);

    // A fresh operator: the deleted link is cleaned up, the crashed one converges, and
    // there is exactly one claim, owned by the link.
    let mut op = Operator::start(OPERATOR, &cp, &[], &[]);
    cp.wait_for(
        &format!("{links}/early"),
        "early link released",
        CONVERGE,
        |v| v["code"] == 404,
    );
    let frames = cp.wait_for(
        &format!("{links}/frames"),
        "frames accepted",
        CONVERGE,
        |v| condition(v, "Accepted")["status"] == "True",
    );
    let (_, claims) = cp.get_json(&format!(
        "/api/v1/namespaces/{NS}/persistentvolumeclaims?labelSelector=ipclink.dev/link"
    ));
    let items = claims["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 1, "no duplicate claims: {claims:#}");
    assert_eq!(
        items[0]["metadata"]["uid"], claim["metadata"]["uid"],
        "the same claim, kept"
    );
    assert_eq!(
        items[0]["metadata"]["ownerReferences"][0]["uid"], frames["metadata"]["uid"],
        "{claims:#}"
    );

    // kube-apiserver killed and restarted under the running operator: its watches
    // relist, and new and changed links are reconciled.
    cp.restart_apiserver();
    cp.create(&links, &link(NS, "after", spec(2)));
    let (code, text) = cp
        .request(
            "PATCH",
            &format!("{links}/frames"),
            Some(&json!({"spec": spec(3)}).to_string()),
        )
        .expect("patch");
    assert_eq!(code, 200, "{text}");
    cp.wait_for(
        &format!("{links}/after"),
        "a link created after the restart",
        CONVERGE,
        |v| condition(v, "Accepted")["status"] == "True" && v["status"]["channelCount"] == 2,
    );
    cp.wait_for(
        &format!("{links}/frames"),
        "a link changed after the restart",
        CONVERGE,
        |v| v["status"]["channelCount"] == 3,
    );
    let (_, claims) = cp.get_json(&format!(
        "/api/v1/namespaces/{NS}/persistentvolumeclaims?labelSelector=ipclink.dev/link"
    ));
    assert_eq!(
        claims["items"].as_array().map(Vec::len),
        Some(2),
        "{claims:#}"
    );

    // SIGTERM: in-flight work finishes and the process exits 0.
    let status = op.stop();
    assert!(status.success(), "{status:?}\n{}", op.logs());
    assert!(op.logs().contains("stopped"), "{}", op.logs());
}
