//! `ipclink-operator`: `crd` prints the CustomResourceDefinition; `run` reconciles.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ipclink_core::metrics::{OperatorMetrics, render, render_channel_groups};
use ipclink_core::spec::Phase;
use ipclink_operator::controller::{self, Settings, Shared};
use ipclink_operator::depth::{self, Samples, Sources};
use ipclink_operator::provision;

#[derive(Parser, Debug)]
#[command(
    name = "ipclink-operator",
    version,
    about = "Reconciles IpcLink resources"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the IpcLink CustomResourceDefinition (YAML) for `kubectl apply -f -`.
    Crd,
    /// Run the controller against the cluster of KUBECONFIG (or in-cluster).
    Run(RunArgs),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Serve /metrics and /healthz here.
    #[arg(long, default_value = "0.0.0.0:9810")]
    metrics_listen: SocketAddr,
    /// Links reconciled at once.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// Look at an unchanged link again after this many seconds.
    #[arg(long, default_value_t = 300)]
    resync_seconds: u64,
    /// A node plugin's (or sidecar's) metrics address whose /v1/links is gathered:
    /// `HOST:PORT` or `NODE=HOST:PORT`. Repeatable.
    #[arg(long = "links-endpoint", value_name = "[NODE=]HOST:PORT")]
    links_endpoints: Vec<String>,
    /// Gather from node plugin pods found by label: `NAMESPACE/SELECTOR`, e.g.
    /// `ipclink-system/app.kubernetes.io/component=node-plugin`.
    #[arg(long, value_name = "NAMESPACE/SELECTOR")]
    node_plugins: Option<String>,
    /// Metrics port of the node plugin pods.
    #[arg(long, default_value_t = 9809)]
    node_plugin_port: u16,
    /// Seconds between two gatherings of depths (the rate at which status.channels
    /// changes).
    #[arg(long, default_value_t = 30)]
    depth_interval_seconds: u64,
    /// Do not provision PersistentVolumes for persistent-mode claims (when
    /// external-provisioner does it through the CSI controller instead).
    #[arg(long)]
    no_provisioner: bool,
}

fn main() {
    ipclink_sidecar::init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => {
            use std::io::Write;
            let yaml = ipclink_operator::crd::crd_yaml();
            match std::io::stdout().lock().write_all(yaml.as_bytes()) {
                // `ipclink-operator crd | head` is not an error.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                r => r.context("writing the CRD to stdout"),
            }
        }
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("tokio runtime")
            .and_then(|rt| rt.block_on(run(args))),
    };
    if let Err(e) = result {
        eprintln!("ipclink-operator: {e:#}");
        std::process::exit(1);
    }
}

/// (node label, address) of a `--links-endpoint`.
fn endpoint(arg: &str) -> anyhow::Result<(String, String)> {
    let (node, addr) = arg.split_once('=').unwrap_or((arg, arg));
    anyhow::ensure!(
        addr.rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
        "--links-endpoint {arg:?}: expected HOST:PORT or NODE=HOST:PORT"
    );
    Ok((node.to_owned(), addr.to_owned()))
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    // The one signal watcher, installed before anything starts.
    let signal = ipclink_sidecar::shutdown_signal().context("installing the signal handler")?;
    let endpoints: Vec<(String, String)> = args
        .links_endpoints
        .iter()
        .map(|a| endpoint(a))
        .collect::<anyhow::Result<_>>()?;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes API: set KUBECONFIG or run in a cluster")?;
    controller::check_crd(&client).await?;

    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("--metrics-listen {}", args.metrics_listen))?;
    let registry = prometheus::Registry::new();
    let metrics = OperatorMetrics::new(&registry)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = {
        let rx = stop_rx.clone();
        move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        }
    };
    tokio::spawn(async move {
        signal.await;
        tracing::info!("signal received; finishing in-flight reconciles");
        let _ = stop_tx.send(true);
    });

    let depths = controller::Depths::default();
    let samples = Samples::default();
    let (changed_tx, changed_rx) = futures::channel::mpsc::channel(1024);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let settings = Settings {
        concurrency: args.concurrency,
        resync: Duration::from_secs(args.resync_seconds),
        fault: std::env::var("IPCLINK_OPERATOR_FAULT").ok(),
        instance: std::env::var("POD_NAME").unwrap_or_else(|_| "ipclink-operator".into()),
    };
    let controller = tokio::spawn(controller::run(
        client.clone(),
        settings,
        metrics.clone(),
        depths.clone(),
        changed_rx,
        stopped(),
        ready_tx,
    ));
    let shared = ready_rx.await.context("the controller did not start")?;
    serve_metrics(
        listener,
        registry,
        metrics,
        shared,
        samples.clone(),
        stop_rx.clone(),
    );
    let plugins = match &args.node_plugins {
        None => None,
        Some(arg) => {
            let (ns, selector) = arg
                .split_once('/')
                .filter(|(ns, sel)| !ns.is_empty() && !sel.is_empty())
                .with_context(|| format!("--node-plugins {arg:?}: expected NAMESPACE/SELECTOR"))?;
            Some((
                kube::Api::namespaced(client.clone(), ns),
                selector.to_owned(),
                args.node_plugin_port,
            ))
        }
    };
    if !endpoints.is_empty() || plugins.is_some() {
        tokio::spawn(depth::run(
            Sources {
                endpoints,
                plugins,
                interval: Duration::from_secs(args.depth_interval_seconds.max(1)),
                timeout: Duration::from_secs(5),
            },
            depths,
            samples,
            changed_tx,
            stop_rx.clone(),
        ));
    }
    let provisioner =
        (!args.no_provisioner).then(|| tokio::spawn(provision::run(client, stop_rx.clone())));
    tracing::info!(metrics = %args.metrics_listen, "ipclink-operator running");
    controller.await.context("controller task")?;
    if let Some(p) = provisioner {
        let _ = p.await;
    }
    tracing::info!("stopped");
    Ok(())
}

fn serve_metrics(
    listener: tokio::net::TcpListener,
    registry: prometheus::Registry,
    metrics: OperatorMetrics,
    shared: Shared,
    samples: Samples,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use axum::routing::get;
    let links = shared.links;
    let scrape = move || {
        let registry = registry.clone();
        let metrics = metrics.clone();
        let links = links.clone();
        let samples = samples.clone();
        async move {
            let phases = [
                Phase::Pending,
                Phase::Ready,
                Phase::Degraded,
                Phase::Invalid,
                Phase::Terminating,
            ];
            let state = links.state();
            for p in phases {
                let n = state
                    .iter()
                    .filter(|l| {
                        l.status
                            .as_ref()
                            .and_then(|s| s.phase)
                            .unwrap_or(Phase::Pending)
                            == p
                    })
                    .count();
                metrics
                    .links
                    .with_label_values(&[format!("{p:?}").as_str()])
                    .set(n as i64);
            }
            let mut text = render(&registry);
            let held = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let labels: Vec<[(&str, &str); 1]> = held
                .iter()
                .map(|(node, _)| [("node", node.as_str())])
                .collect();
            let groups: Vec<ipclink_core::metrics::SampleGroup<'_>> = held
                .iter()
                .zip(&labels)
                .map(|((_, s), l)| (&l[..], s.as_slice()))
                .collect();
            render_channel_groups(&groups, &mut text);
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4",
                )],
                text,
            )
        }
    };
    let app = axum::Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(|| async { "ok\n" }));
    tokio::spawn(async move {
        let _ = ipclink_sidecar::http::serve(listener, app, Default::default(), async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    });
}
