//! The reconcile paths against a scripted API server: the test answers each request the
//! client sends (no kube-apiserver), so the branches a real server reaches only in a
//! race (a 409 on create, a 404 on removal) run every time, and every request the
//! reconcile sent is checked afterwards.

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response};
use ipclink_core::metrics::OperatorMetrics;
use ipclink_core::{IpcLink, IpcLinkSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Client;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher::Event as WatchEvent;
use serde_json::{Value, json};

use super::*;

/// One request the reconcile sent: method, path (no query) and JSON body.
#[derive(Debug, Clone)]
struct Sent {
    method: Method,
    path: String,
    body: Value,
    /// Whether no answer was scripted for it (the server answered 500).
    unscripted: bool,
}

/// The server's side: answers with `answer(request, earlier requests to the same path)`
/// and keeps every request.
type Answer = dyn Fn(&Sent, usize) -> (u16, Value) + Send + Sync;

const LINKS: &str = "/apis/ipclink.dev/v1alpha1/namespaces/ns/ipclinks/a";
const CLAIMS: &str = "/api/v1/namespaces/ns/persistentvolumeclaims";
const CLAIM: &str = "/api/v1/namespaces/ns/persistentvolumeclaims/a";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ns/leases/ipclink-a";
const CLASS: &str = "/apis/storage.k8s.io/v1/storageclasses/ipclink";

fn client(answer: Arc<Answer>) -> (Client, Arc<Mutex<Vec<Sent>>>) {
    let log: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let kept = log.clone();
    let service = tower::service_fn(move |req: Request<Body>| {
        let (log, answer) = (kept.clone(), answer.clone());
        async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.expect("request body");
            let mut sent = Sent {
                method: parts.method,
                path: parts.uri.path().to_owned(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                unscripted: false,
            };
            let mut log = log.lock().expect("log");
            let before = log
                .iter()
                .filter(|s| s.path == sent.path && s.method == sent.method)
                .count();
            let (code, reply) = answer(&sent, before);
            sent.unscripted = reply["reason"] == "unscripted";
            log.push(sent);
            drop(log);
            let response = Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&reply).expect("encode")))
                .expect("response");
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    (Client::new(service, "ns"), log)
}

/// A kube `Status` failure with `code`, as the API server sends it.
fn status(code: u16, reason: &str) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "message": reason, "reason": reason, "code": code}),
    )
}

fn context(client: Client) -> Arc<Context> {
    let pods = Arc::new(PodIndex::new());
    pods.apply(&WatchEvent::<k8s_openapi::api::core::v1::Pod>::InitDone);
    let registry = prometheus::Registry::new();
    Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: None,
            },
        ),
        client,
        pods,
        metrics: OperatorMetrics::new(&registry).expect("metrics"),
        depths: Depths::default(),
        resync: Duration::from_secs(300),
        leases: kube::runtime::reflector::store().0,
        leases_listed: Arc::default(),
        nodes: kube::runtime::reflector::store().0,
        nodes_listed: Arc::default(),
        rehome_after: None,
        status: status::StatusWriter::new(Duration::from_secs(10)),
    })
}

/// Link `ns/a` with one FIFO, `finalizers` and, for a persistent link, a claim.
fn link(finalizers: Option<Vec<String>>, persistent: bool) -> IpcLink {
    let mut spec: IpcLinkSpec = serde_json::from_value(json!({
        "sizeLimit": "1Mi",
        "channels": [{"name": "jobs", "kind": "fifo"}],
        "members": [{"name": "app", "podSelector": {"matchLabels": {"app": "a"}}}],
    }))
    .expect("spec");
    if persistent {
        spec.claim = Some(serde_json::from_value(json!({})).expect("claim"));
    }
    let mut link = IpcLink::new("a", spec);
    link.metadata = ObjectMeta {
        name: Some("a".into()),
        namespace: Some("ns".into()),
        uid: Some("uid-a".into()),
        resource_version: Some("1".into()),
        finalizers,
        ..ObjectMeta::default()
    };
    link
}

/// What the server answers that the tests do not vary: the link itself for a patch of
/// it, the status patch, Events, an absent Lease.
fn usual(link: &IpcLink, sent: &Sent) -> (u16, Value) {
    let me = serde_json::to_value(link).expect("link");
    match (sent.method.as_str(), sent.path.as_str()) {
        ("PATCH", p) if p.starts_with(LINKS) => (200, me),
        ("GET", LEASE) => status(404, "NotFound"),
        ("POST", p) if p.ends_with("/events") => (201, sent.body.clone()),
        _ => status(500, "unscripted"),
    }
}

fn sent_to(log: &Mutex<Vec<Sent>>, method: &str, path: &str) -> Vec<Sent> {
    log.lock()
        .expect("log")
        .iter()
        .filter(|s| s.method == method && s.path == path)
        .cloned()
        .collect()
}

fn assert_scripted(log: &Mutex<Vec<Sent>>) {
    let log = log.lock().expect("log");
    // An unscripted request is answered 500; none may have been sent.
    for s in log.iter() {
        assert!(!s.unscripted, "unscripted request {} {}", s.method, s.path);
    }
}

#[tokio::test]
async fn a_fresh_link_gets_the_finalizer_guarded_by_a_test_op() {
    let fresh = link(None, false);
    let shown = fresh.clone();
    let (client, log) = client(Arc::new(move |sent, _| usual(&shown, sent)));
    let action = reconcile(Arc::new(fresh), context(client)).await;
    assert!(action.is_ok(), "{action:?}");
    assert_scripted(&log);
    let patches = sent_to(&log, "PATCH", LINKS);
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert_eq!(
        patches[0].body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ]),
        "the finalizer patch fails instead of overwriting a concurrent change"
    );
    let status = sent_to(&log, "PATCH", &format!("{LINKS}/status"));
    assert_eq!(status.len(), 1, "a new link's status is written once");
    assert_eq!(status[0].body[0]["value"]["phase"], "Pending");
}

#[tokio::test]
async fn a_claim_made_meanwhile_is_read_back_after_409() {
    let link = link(Some(vec![FINALIZER.into()]), true);
    let shown = link.clone();
    let theirs_made_first = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "a", "namespace": "ns", "uid": "pvc-1",
            "annotations": {SELECTED_NODE: "n1"},
            "ownerReferences": [{"apiVersion": "ipclink.dev/v1alpha1", "kind": "IpcLink",
                "name": "a", "uid": "uid-a", "controller": true}]},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "ipclink"},
    });
    let (client, log) = client(Arc::new(move |sent, before| {
        match (sent.method.as_str(), sent.path.as_str()) {
            ("GET", CLAIM) if before == 0 => status(404, "NotFound"),
            ("GET", CLAIM) => (200, theirs_made_first.clone()),
            ("GET", CLASS) => (
                200,
                json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                       "metadata": {"name": "ipclink"}, "provisioner": DRIVER}),
            ),
            ("POST", CLAIMS) => status(409, "AlreadyExists"),
            _ => usual(&shown, sent),
        }
    }));
    let action = reconcile(Arc::new(link), context(client)).await;
    assert!(
        action.is_ok(),
        "a 409 on create is not an error: {action:?}"
    );
    assert_scripted(&log);
    assert_eq!(sent_to(&log, "POST", CLAIMS).len(), 1, "one create");
    assert_eq!(sent_to(&log, "GET", CLAIM).len(), 2, "read again after 409");
    let status = sent_to(&log, "PATCH", &format!("{LINKS}/status"));
    assert_eq!(status.len(), 1);
    assert_eq!(
        status[0].body[0]["value"]["node"], "n1",
        "the claim read back names the node"
    );
}

const DRIVER: &str = ipclink_core::model::names::DRIVER_NAME;

#[tokio::test]
async fn a_finalizer_already_gone_on_removal_is_done() {
    let mut link = link(Some(vec![FINALIZER.into()]), false);
    link.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    let shown = link.clone();
    let (client, log) = client(Arc::new(move |sent, _| {
        match (sent.method.as_str(), sent.path.as_str()) {
            ("GET", CLAIM) => status(404, "NotFound"),
            ("PATCH", LINKS) => status(404, "NotFound"),
            _ => usual(&shown, sent),
        }
    }));
    let action = reconcile(Arc::new(link), context(client)).await;
    assert!(
        action.is_ok(),
        "a link gone meanwhile is removed: {action:?}"
    );
    assert_scripted(&log);
    let patches = sent_to(&log, "PATCH", LINKS);
    assert_eq!(patches.len(), 1);
    assert_eq!(
        patches[0].body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ])
    );
    assert!(
        sent_to(&log, "PATCH", &format!("{LINKS}/status")).is_empty(),
        "no status is written for a link being removed with no member"
    );
}

#[tokio::test]
async fn no_status_write_when_only_times_differ() {
    // First reconcile: learn the status a fresh link gets.
    let first = link(Some(vec![FINALIZER.into()]), false);
    let shown = first.clone();
    let (c, log) = client(Arc::new(move |sent, _| usual(&shown, sent)));
    reconcile(Arc::new(first.clone()), context(c))
        .await
        .expect("first reconcile");
    let written = sent_to(&log, "PATCH", &format!("{LINKS}/status"));
    assert_eq!(written.len(), 1);
    let mut status: IpcLinkStatus =
        serde_json::from_value(written[0].body[0]["value"].clone()).expect("status");
    // The same status, stored an hour earlier: only its times differ.
    let earlier = Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).expect("time"));
    for c in &mut status.conditions {
        c.last_transition_time = earlier.clone();
    }
    let mut stored = first;
    stored.status = Some(status);
    let shown = stored.clone();
    // A new replica (its own throttle): it must not write either.
    let (c, log) = client(Arc::new(move |sent, _| usual(&shown, sent)));
    reconcile(Arc::new(stored), context(c))
        .await
        .expect("second reconcile");
    assert_scripted(&log);
    assert!(
        sent_to(&log, "PATCH", &format!("{LINKS}/status")).is_empty(),
        "a status that differs only in times is not written again"
    );
}
