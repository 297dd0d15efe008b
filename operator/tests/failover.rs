//! Leader election on a real kube-apiserver: two replicas, one leads; the standby
//! writes nothing; `kill -9` of the leader hands over within the Lease duration; a
//! leader whose Lease is taken exits; SIGTERM releases the Lease at once.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ipclink_testkit::control_plane::ControlPlane;
use serde_json::json;

const NS: &str = "vision";
const SYSTEM: &str = "ipclink-system";
/// Shorter than the chart's 15 s to keep the test quick; the arithmetic is the same.
const LEASE_SECONDS: u64 = 6;
const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/ipclink-system/leases/ipclink-operator";

fn replica(cp: &ControlPlane, name: &str) -> Operator {
    let lease = LEASE_SECONDS.to_string();
    Operator::start(
        OPERATOR,
        cp,
        &[
            "--leader-elect",
            "--leader-elect-namespace",
            SYSTEM,
            "--leader-elect-duration-seconds",
            &lease,
        ],
        &[("POD_NAME", name)],
    )
}

fn value(op: &Operator, name: &str) -> Option<f64> {
    metric(&op.metrics(), name, &[])
}

fn holder(cp: &ControlPlane) -> serde_json::Value {
    cp.get_json(LEASE).1["spec"]["holderIdentity"].clone()
}

fn wait(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "not {what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// A link with one member pod on node-a, Running: the operator turns it Ready.
fn ready_link(cp: &ControlPlane, name: &str) {
    let spec = json!({
        "members": [{"name": "app", "podSelector": {"matchLabels": {"app": name}}}],
        "channels": [{"name": "events", "kind": "fifo", "mode": "0666"}],
    });
    cp.create(&links_path(NS), &link(NS, name, spec));
    let pods = format!("/api/v1/namespaces/{NS}/pods");
    let pod_name = format!("{name}-0");
    cp.create(
        &pods,
        &pod(&pod_name, name, name, Some("node-a"), 1000, None, false),
    );
    set_running(cp, NS, &pod_name);
}

fn phase(cp: &ControlPlane, name: &str) -> serde_json::Value {
    cp.get_json(&format!("{}/{name}", links_path(NS))).1["status"]["phase"].clone()
}

#[test]
fn one_replica_leads_and_a_standby_takes_over_within_the_lease() {
    let mut cp = ControlPlane::start();
    cp.install_ipclink_crd();
    cp.namespace(NS);
    cp.namespace(SYSTEM);

    let mut a = replica(&cp, "op-a");
    wait("op-a leading", CONVERGE, || {
        value(&a, "ipclink_operator_leader") == Some(1.0)
    });
    // Ready once its caches hold their first list (no link exists yet).
    a.wait_ready(CONVERGE);
    let mut b = replica(&cp, "op-b");
    wait("op-b standing by", CONVERGE, || {
        b.logs().contains("standing by")
    });
    assert_eq!(holder(&cp), "op-a");

    ready_link(&cp, "before");
    cp.wait_for(
        &format!("{}/before", links_path(NS)),
        "before Ready",
        CONVERGE,
        |v| v["status"]["phase"] == "Ready",
    );
    // The standby serves metrics and health, writes nothing and shows no link series
    // (it has no link cache: absent, not zero).
    let standby = b.metrics();
    assert_eq!(
        metric(&standby, "ipclink_operator_leader", &[]),
        Some(0.0),
        "{standby}"
    );
    assert_eq!(
        metric(&standby, "ipclink_status_writes_total", &[]),
        Some(0.0),
        "{standby}"
    );
    for absent in [
        "ipclink_link_info",
        "ipclink_links",
        "ipclink_reconcile_total",
    ] {
        assert!(
            metric(&standby, absent, &[]).is_none(),
            "{absent} on a standby:\n{standby}"
        );
    }
    assert_eq!(
        http_get(b.port, "/readyz").as_deref(),
        Some("ready\n"),
        "a standby is ready"
    );
    let writes_a = value(&a, "ipclink_status_writes_total").expect("leader's writes");
    assert!(writes_a >= 1.0, "the leader wrote the status");

    let version = |name: &str| {
        cp.get_json(&format!("{}/{name}", links_path(NS))).1["metadata"]["resourceVersion"].clone()
    };
    let before = version("before");

    // kill -9: no release; op-b waits for the Lease to expire, then leads.
    a.kill9();
    let killed = Instant::now();
    ready_link(&cp, "after");
    let limit = Duration::from_secs(LEASE_SECONDS + 10);
    wait("after Ready", limit, || phase(&cp, "after") == "Ready");
    let took = killed.elapsed();
    // The new leader read the pods before judging the link it found Ready: it wrote
    // nothing over it (a reconcile before the first pod list would write Pending).
    assert_eq!(version("before"), before, "{}", b.logs());
    assert_eq!(phase(&cp, "before"), "Ready");
    assert_eq!(holder(&cp), "op-b");
    assert_eq!(value(&b, "ipclink_operator_leader"), Some(1.0));
    assert!(
        value(&b, "ipclink_status_writes_total").unwrap_or(0.0) >= 1.0,
        "the new leader wrote the status"
    );
    assert!(
        b.logs().contains("this replica is the leader"),
        "{}",
        b.logs()
    );
    println!(
        "failover: a link created after kill -9 of the leader was Ready {:.1} s later (Lease {LEASE_SECONDS} s)",
        took.as_secs_f64()
    );
    drop(a);

    // A third replica stands by; SIGTERM of the leader releases the Lease, so the
    // standby leads well before the Lease would have expired.
    let mut c = replica(&cp, "op-c");
    wait("op-c standing by", CONVERGE, || {
        c.logs().contains("standing by")
    });
    assert!(b.stop().success(), "{}", b.logs());
    assert!(
        b.logs().contains("released the leader Lease"),
        "{}",
        b.logs()
    );
    let handover = wait("op-c leading", Duration::from_secs(LEASE_SECONDS), || {
        value(&c, "ipclink_operator_leader") == Some(1.0)
    });
    assert_eq!(holder(&cp), "op-c");
    println!("handover after SIGTERM: {:.1} s", handover.as_secs_f64());

    // Another identity takes the Lease (as a replica that outlived a partition
    // would): the leader notices at its next renewal and exits.
    let now = k8s_now();
    let patch = json!({"spec": {"holderIdentity": "thief", "renewTime": now, "acquireTime": now}});
    let (code, text) = cp
        .request("PATCH", LEASE, Some(&patch.to_string()))
        .expect("patch the Lease");
    assert_eq!(code, 200, "{text}");
    let status = c.wait_exit(Duration::from_secs(LEASE_SECONDS + 10));
    assert!(!status.success(), "{status:?}");
    assert!(c.logs().contains("lost leadership"), "{}", c.logs());

    // The API server stops answering: a leader that cannot renew must stop leading
    // before its Lease expires, since a standby may take it as soon as the API server
    // is back.
    let mut d = replica(&cp, "op-d");
    wait("op-d leading", CONVERGE, || {
        value(&d, "ipclink_operator_leader") == Some(1.0)
    });
    cp.stop_apiserver();
    let down = Instant::now();
    let status = d.wait_exit(Duration::from_secs(LEASE_SECONDS + 10));
    let exited = down.elapsed();
    cp.start_apiserver();
    assert!(!status.success(), "{status:?}\n{}", d.logs());
    assert!(d.logs().contains("lost leadership"), "{}", d.logs());
    assert!(
        exited < Duration::from_secs(LEASE_SECONDS),
        "the leader went on for {exited:?} without renewing a {LEASE_SECONDS} s Lease\n{}",
        d.logs()
    );
    println!(
        "API server down: the leader exited {:.1} s later (Lease {LEASE_SECONDS} s)",
        exited.as_secs_f64()
    );
}

/// Now as a Kubernetes MicroTime.
fn k8s_now() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
