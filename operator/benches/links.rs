//! How fast the operator accepts many links created at once, against a real
//! kube-apiserver: `cargo bench -p ipclink-operator --bench links [-- --links N]`.
//! Prints one table: control-plane warm start, time to create, time until every link is
//! Accepted, reconciles per second, and the mean reconcile duration.

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use ipclink_core::IpcLink;
use ipclink_testkit::control_plane::ControlPlane;
use ipclink_testkit::http::metric;
use ipclink_testkit::operator::Operator;
use kube::api::{Api, ListParams, PostParams};

fn main() {
    let mut links = 1000usize;
    let mut concurrency = "16".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--links" => links = args.next().and_then(|v| v.parse().ok()).expect("--links N"),
            "--concurrency" => concurrency = args.next().expect("--concurrency N"),
            "--bench" => {}
            other => panic!("unknown argument {other}; use --links N --concurrency N"),
        }
    }
    let started = Instant::now();
    let cp = ControlPlane::start();
    let warm_start = started.elapsed();
    cp.install_ipclink_crd();
    cp.namespace("bench");
    let op = Operator::start(
        env!("CARGO_BIN_EXE_ipclink-operator"),
        &cp,
        &["--concurrency", &concurrency],
        &[],
    );

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (created, accepted) = rt.block_on(async {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(&cp.kubeconfig).expect("kubeconfig"),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("config");
        let client = kube::Client::try_from(config).expect("client");
        let api: Api<IpcLink> = Api::namespaced(client, "bench");
        let start = Instant::now();
        stream::iter(0..links)
            .map(|i| {
                let api = api.clone();
                async move {
                    let link = ipclink_core::parse_links(
                        "bench",
                        &format!(
                            "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: {{name: link-{i}, namespace: bench}}\nspec:\n  members: [{{name: app, podSelector: {{matchLabels: {{app: a{i}}}}}}}]\n  channels: [{{name: frames, kind: shm, size: 1Mi}}, {{name: events, kind: fifo}}]\n  semaphores: [{{name: ready, initial: 0}}]\n"
                        ),
                    )
                    .expect("link")
                    .remove(0);
                    api.create(&PostParams::default(), &link).await.expect("create");
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<()>>()
            .await;
        let created = start.elapsed();
        loop {
            let list = api.list(&ListParams::default()).await.expect("list");
            let done = list
                .items
                .iter()
                .filter(|l| {
                    l.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Accepted" && c.status == "True")
                    })
                })
                .count();
            if done == links {
                break (created, start.elapsed());
            }
            assert!(start.elapsed() < Duration::from_secs(600), "only {done} of {links} accepted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let text = op.metrics();
    let total = metric(&text, "ipclink_reconcile_total", &[("result", "ok")]).unwrap_or(0.0);
    let errors = metric(&text, "ipclink_reconcile_total", &[("result", "error")]).unwrap_or(0.0);
    let sum = metric(&text, "ipclink_reconcile_duration_seconds_sum", &[]).unwrap_or(0.0);
    let count = metric(&text, "ipclink_reconcile_duration_seconds_count", &[]).unwrap_or(1.0);
    println!(
        "| links | concurrency | control plane warm start | create all | all Accepted | reconciles | reconciles/s | mean reconcile | errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {links} | {concurrency} | {:.1} s | {:.2} s | {:.2} s | {total} | {:.0} | {:.1} ms | {errors} |",
        warm_start.as_secs_f64(),
        created.as_secs_f64(),
        accepted.as_secs_f64(),
        total / accepted.as_secs_f64(),
        sum / count * 1000.0
    );
}
