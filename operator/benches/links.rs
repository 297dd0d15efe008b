//! The operator at scale, against a real kube-apiserver:
//! `cargo bench -p ipclink-operator --bench links [-- --links N --pods N --endpoints N]`
//! (defaults 10,000 links, 30,000 pods, 500 depth endpoints).
//!
//! 1. Creates the pods (objects only: no kubelet runs them) across namespaces, three
//!    per link, shaped like real workload pods (two containers, env, probes,
//!    resources, annotations, an ipclink volume).
//! 2. Serves `/v1/links` from `--endpoints` simulated node plugins on loopback, 5% of
//!    which accept connections and never answer.
//! 3. Starts the operator, waits until it is ready (every pod listed), creates the
//!    links and times until every one is Accepted; reads its RSS, reconciles/s, p99
//!    reconcile latency and the depth rounds.
//! 4. Restarts it and times until every link has been reconciled once.
//!
//! Prints Markdown tables. Nothing is asserted: compare the rows of one run.

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use ipclink_core::IpcLink;
use ipclink_testkit::control_plane::ControlPlane;
use ipclink_testkit::http::metric;
use ipclink_testkit::operator::Operator;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OPERATOR: &str = env!("CARGO_BIN_EXE_ipclink-operator");

struct Args {
    links: usize,
    pods: usize,
    endpoints: usize,
    namespaces: usize,
}

fn args() -> Args {
    let mut a = Args {
        links: 10_000,
        pods: 30_000,
        endpoints: 500,
        namespaces: 50,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--links" => a.links = num("--links"),
            "--pods" => a.pods = num("--pods"),
            "--endpoints" => a.endpoints = num("--endpoints"),
            "--namespaces" => a.namespaces = num("--namespaces"),
            "--bench" => {}
            other => panic!(
                "unknown argument {other}; use --links N --pods N --endpoints N --namespaces N"
            ),
        }
    }
    assert!(a.links > 0 && a.namespaces > 0 && a.endpoints > 0);
    a
}

fn namespace(a: &Args, link: usize) -> String {
    format!("bench-{}", link % a.namespaces)
}

fn link_yaml(a: &Args, i: usize) -> IpcLink {
    let ns = namespace(a, i);
    ipclink_core::parse_links(
        &ns,
        &format!(
            "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: {{name: link-{i}, namespace: {ns}}}\nspec:\n  members: [{{name: app, podSelector: {{matchLabels: {{app: a{i}}}}}}}]\n  channels: [{{name: frames, kind: shm, size: 1Mi, mode: \"0666\"}}, {{name: events, kind: fifo, mode: \"0666\"}}]\n  semaphores: [{{name: ready, initial: 0, mode: \"0666\"}}]\n"
        ),
    )
    .expect("link")
    .remove(0)
}

/// A pod as a Deployment makes it: most of it is nothing the operator reads.
fn pod(a: &Args, p: usize) -> Pod {
    let link = p % a.links;
    let ns = namespace(a, link);
    let env: Vec<_> = (0..10)
        .map(|e| serde_json::json!({"name": format!("SETTING_{e}"), "value": format!("value-{e}-{}", "x".repeat(24))}))
        .collect();
    let container = |name: &str| {
        serde_json::json!({
            "name": name,
            "image": format!("registry.example.com/team/{name}:1.2.3"),
            "args": ["--config", "/etc/app/config.yaml", "--verbose"],
            "env": env,
            "ports": [{"containerPort": 8080, "name": "http"}],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 5},
            "securityContext": {"runAsUser": 1000, "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [
                {"name": "ipc", "mountPath": "/dev/shm"},
                {"name": "config", "mountPath": "/etc/app"},
            ],
        })
    };
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": format!("pod-{p}"),
            "namespace": ns,
            "labels": {"app": format!("a{link}"), "pod-template-hash": "5d8f7c9b4", "team": "vision"},
            "annotations": {
                "prometheus.io/scrape": "true",
                "kubectl.kubernetes.io/restartedAt": "2026-11-30T10:00:00Z",
                "example.com/owner": "vision-team@example.com",
            },
        },
        "spec": {
            "containers": [container("app"), container("helper")],
            "volumes": [
                {"name": "ipc", "csi": {"driver": "csi.ipclink.dev", "volumeAttributes": {"link": format!("link-{link}")}}},
                {"name": "config", "emptyDir": {}},
            ],
            "securityContext": {"fsGroup": 2000, "runAsNonRoot": true},
            "terminationGracePeriodSeconds": 30,
        },
    }))
    .expect("pod")
}

/// `/v1/links` bodies of the simulated node plugins: endpoint `e` reports the links
/// `i` with `i % endpoints == e`.
fn bodies(a: &Args) -> Vec<String> {
    let mut per: Vec<Vec<serde_json::Value>> = vec![Vec::new(); a.endpoints];
    for i in 0..a.links {
        per[i % a.endpoints].push(serde_json::json!({
            "namespace": namespace(a, i), "name": format!("link-{i}"),
            "path": format!("/var/lib/ipclink/links/{}/link-{i}", namespace(a, i)),
            "sizeLimitEnforced": true, "limitBytes": 8 << 20, "usedBytes": 1 << 20,
            "channels": [
                {"name": "frames", "kind": "shm", "file": "frames", "mode": "0660", "uid": 0, "gid": 0, "present": true, "residentBytes": 4096},
                {"name": "events", "kind": "fifo", "file": "events", "mode": "0660", "uid": 0, "gid": 0, "present": true, "queueBytes": i % 7},
            ],
            "semaphores": [
                {"name": "ready", "kind": "semaphore", "file": "sem.ready", "mode": "0660", "uid": 0, "gid": 0, "present": true, "value": 1},
            ],
        }));
    }
    per.into_iter()
        .map(|links| serde_json::json!({ "links": links }).to_string())
        .collect()
}

/// Serves each body on its own loopback port; every twentieth endpoint accepts and
/// never answers. Returns `NODE=HOST:PORT` arguments and how many are silent.
async fn serve(bodies: Vec<String>) -> (Vec<String>, usize) {
    let mut args = Vec::new();
    let mut silent = 0;
    for (e, body) in bodies.into_iter().enumerate() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        args.push(format!("node-{e}.bench.example.com={addr}"));
        let mute = e % 20 == 19;
        silent += usize::from(mute);
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                if mute {
                    held.push(conn);
                    continue;
                }
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(head.as_bytes()).await;
                    let _ = conn.write_all(body.as_bytes()).await;
                });
            }
        });
    }
    (args, silent)
}

/// The `q` quantile of a Prometheus histogram, interpolated within its bucket.
fn quantile(text: &str, name: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, rest.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    let want = q * total;
    let mut prev = (0.0, 0.0);
    for (le, n) in buckets {
        if n >= want {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let frac = if n > prev.1 {
                (want - prev.1) / (n - prev.1)
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, n);
    }
    None
}

#[derive(Default)]
struct Figures {
    mode: &'static str,
    what: &'static str,
    took: Duration,
    reconciles: f64,
    errors: f64,
    p99_ms: f64,
    mean_ms: f64,
    rss_mib: f64,
    peak_mib: f64,
    writes: f64,
}

fn figures(op: &Operator, mode: &'static str, what: &'static str, took: Duration) -> Figures {
    let text = op.metrics();
    let m = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels).unwrap_or(0.0);
    let count = m("ipclink_reconcile_duration_seconds_count", &[]).max(1.0);
    Figures {
        mode,
        what,
        took,
        reconciles: m("ipclink_reconcile_total", &[("result", "ok")]),
        errors: m("ipclink_reconcile_total", &[("result", "error")]),
        p99_ms: quantile(&text, "ipclink_reconcile_duration_seconds", 0.99).unwrap_or(f64::NAN)
            * 1000.0,
        mean_ms: m("ipclink_reconcile_duration_seconds_sum", &[]) / count * 1000.0,
        rss_mib: op
            .rss_bytes()
            .map_or(f64::NAN, |b| b as f64 / (1 << 20) as f64),
        peak_mib: op
            .peak_rss_bytes()
            .map_or(f64::NAN, |b| b as f64 / (1 << 20) as f64),
        writes: m("ipclink_status_writes_total", &[]),
    }
}

fn wait_metric(op: &Operator, what: &str, limit: Duration, done: impl Fn(&str) -> bool) {
    let start = Instant::now();
    while !done(&op.metrics()) {
        assert!(start.elapsed() < limit, "{what} not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn main() {
    let a = args();
    let started = Instant::now();
    let cp = ControlPlane::start();
    let warm_start = started.elapsed();
    cp.install_ipclink_crd();
    for n in 0..a.namespaces {
        cp.namespace(&format!("bench-{n}"));
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = rt.block_on(async {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&cp.kubeconfig).expect("kubeconfig"),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("config");
        kube::Client::try_from(config).expect("client")
    });

    let start = Instant::now();
    let pod_bytes = serde_json::to_vec(&pod(&a, 0)).expect("json").len();
    rt.block_on(
        stream::iter(0..a.pods)
            .map(|p| {
                let api: Api<Pod> = Api::namespaced(client.clone(), &namespace(&a, p % a.links));
                let pod = pod(&a, p);
                async move {
                    api.create(&PostParams::default(), &pod)
                        .await
                        .expect("create pod")
                }
            })
            .buffer_unordered(64)
            .for_each(|_| async {}),
    );
    let pods_created = start.elapsed();
    eprintln!("{} pods created in {pods_created:.1?}", a.pods);

    let (endpoint_args, silent) = rt.block_on(serve(bodies(&a)));
    let mut op_args: Vec<String> = vec!["--depth-interval-seconds".into(), "5".into()];
    for e in &endpoint_args {
        op_args.push("--links-endpoint".into());
        op_args.push(e.clone());
    }
    let start_op = || {
        let args: Vec<&str> = op_args.iter().map(String::as_str).collect();
        Operator::start(OPERATOR, &cp, &args, &[])
    };

    // Fresh links against the slim cache, once the operator has read the cluster: a
    // cluster's operator runs long before links are created (its start is measured by
    // the restarts below).
    let mut op = start_op();
    let listed = op.wait_ready(Duration::from_secs(300));
    let listed_rss = op
        .rss_bytes()
        .map_or(f64::NAN, |b| b as f64 / (1 << 20) as f64);
    let links: Api<IpcLink> = Api::all(client.clone());
    let start = Instant::now();
    rt.block_on(
        stream::iter(0..a.links)
            .map(|i| {
                let api: Api<IpcLink> = Api::namespaced(client.clone(), &namespace(&a, i));
                let link = link_yaml(&a, i);
                async move {
                    api.create(&PostParams::default(), &link)
                        .await
                        .expect("create link")
                }
            })
            .buffer_unordered(32)
            .for_each(|_| async {}),
    );
    let links_created = start.elapsed();
    // Watched, not listed: a list of every link twice a second would load the API
    // server more than the operator does.
    let accepted = rt.block_on(async {
        use kube::runtime::{WatchStreamExt, watcher};
        let mut done = std::collections::HashSet::new();
        let mut events =
            std::pin::pin!(watcher(links.clone(), watcher::Config::default()).applied_objects());
        while done.len() < a.links {
            let next = tokio::time::timeout(Duration::from_secs(900), events.next()).await;
            let Ok(Some(Ok(l))) = next else {
                panic!("only {} of {} accepted", done.len(), a.links);
            };
            let ok = l.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Accepted" && c.status == "True")
            });
            if ok {
                done.insert((l.metadata.namespace.clone(), l.metadata.name.clone()));
            }
        }
        start.elapsed()
    });
    let mut rows = vec![figures(
        &op,
        "slim + index",
        "create all links until every one is Accepted",
        accepted,
    )];

    // Depth rounds: three after the links exist.
    let rounds =
        |t: &str| metric(t, "ipclink_depth_round_duration_seconds_count", &[]).unwrap_or(0.0);
    let first = rounds(&op.metrics());
    wait_metric(&op, "three depth rounds", Duration::from_secs(120), |t| {
        rounds(t) >= first + 3.0
    });
    let text = op.metrics();
    let depth = |n: &str, l: &[(&str, &str)]| metric(&text, n, l).unwrap_or(f64::NAN);
    let round_count = rounds(&text);
    let round_mean = depth("ipclink_depth_round_duration_seconds_sum", &[]) / round_count;
    let within_5s = depth(
        "ipclink_depth_round_duration_seconds_bucket",
        &[("le", "5")],
    );
    let answered = depth("ipclink_depth_endpoints", &[("state", "answered")]);
    let failed = depth("ipclink_depth_endpoints", &[("state", "failed")]);
    op.stop();

    // A restart: every link reconciled once.
    {
        let label = "restart";
        let op = start_op();
        let start = Instant::now();
        wait_metric(
            &op,
            "every link reconciled",
            Duration::from_secs(900),
            |t| {
                metric(t, "ipclink_reconcile_total", &[("result", "ok")]).unwrap_or(0.0)
                    >= a.links as f64
            },
        );
        rows.push(figures(
            &op,
            label,
            "restart until every link is reconciled once",
            start.elapsed(),
        ));
        drop(op);
    }

    println!(
        "{} links, {} pods ({} B of JSON each) in {} namespaces; control plane warm start {:.1} s; pods created in {:.1} s, links in {:.1} s",
        a.links,
        a.pods,
        pod_bytes,
        a.namespaces,
        warm_start.as_secs_f64(),
        pods_created.as_secs_f64(),
        links_created.as_secs_f64()
    );
    println!(
        "operator ready, every pod cached, {:.1} s after it started serving /healthz; RSS then {listed_rss:.0} MiB\n",
        listed.as_secs_f64()
    );
    println!(
        "| run | measured | time | reconciles | reconciles/s | p99 reconcile | mean reconcile | errors | status writes | RSS | peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.1} s | {} | {:.0} | {:.2} ms | {:.2} ms | {} | {} | {:.0} MiB | {:.0} MiB |",
            r.mode,
            r.what,
            r.took.as_secs_f64(),
            r.reconciles,
            r.reconciles / r.took.as_secs_f64(),
            r.p99_ms,
            r.mean_ms,
            r.errors,
            r.writes,
            r.rss_mib,
            r.peak_mib
        );
    }
    println!(
        "\n| depth endpoints | never answering | rounds | mean round | rounds ≤ 5 s | answered (last) | failed (last) |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {} | {silent} | {round_count} | {:.2} s | {within_5s} of {round_count} | {answered} | {failed} |",
        a.endpoints, round_mean
    );
}
