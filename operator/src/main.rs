//! `ipclink-operator`: `crd` prints the CustomResourceDefinition; `run` reconciles;
//! `remove-links` is the chart's uninstall hook.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ipclink_core::metrics::OperatorMetrics;
use ipclink_operator::cli::{Cli, Command, RunArgs};
use ipclink_operator::controller::{self, Settings};
use ipclink_operator::depth::{self, Sources};
use ipclink_operator::leader::{self, Election};
use ipclink_operator::metrics::Exposed;
use ipclink_operator::provision;
use ipclink_runtime::Shutdown;
use ipclink_runtime::http::{Limits, serve};
use ipclink_runtime::links::router;

fn main() {
    ipclink_runtime::init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => print_crd(),
        Command::Run(args) => runtime().and_then(|rt| rt.block_on(run(args))),
        Command::RemoveLinks(args) => runtime().and_then(|rt| {
            rt.block_on(async {
                let client = kube::Client::try_default()
                    .await
                    .context("no Kubernetes API: set KUBECONFIG or run in a cluster")?;
                let plugins = args.node_plugins.map(|(ns, selector)| Sources {
                    endpoints: Vec::new(),
                    plugins: Some((
                        kube::Api::namespaced(client.clone(), &ns),
                        selector,
                        args.node_plugin_port,
                    )),
                    interval: Duration::from_secs(1),
                    timeout: Duration::from_secs(5),
                });
                ipclink_operator::remove::run(
                    client,
                    plugins,
                    Duration::from_secs(args.timeout_seconds),
                )
                .await
            })
        }),
    };
    if let Err(e) = result {
        eprintln!("ipclink-operator: {e:#}");
        std::process::exit(1);
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
}

fn print_crd() -> anyhow::Result<()> {
    use std::io::Write;
    let yaml = ipclink_operator::crd::crd_yaml().context("serializing the CRD")?;
    match std::io::stdout().lock().write_all(yaml.as_bytes()) {
        // `ipclink-operator crd | head` is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing the CRD to stdout"),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    // The one signal watcher, installed before anything starts.
    let shutdown = Shutdown::install().context("installing the signal handler")?;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes API: set KUBECONFIG or run in a cluster")?;
    controller::check_crd(&client).await?;

    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("--metrics-listen {}", args.metrics_listen))?;
    let registry = prometheus::Registry::new();
    let metrics = OperatorMetrics::new(&registry)?;
    let instance = std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "ipclink-operator".into());
        format!("{host}-{}", std::process::id())
    });
    // Every replica serves metrics and health, leader or not.
    let exposed = Arc::new(Exposed {
        registry,
        metrics: metrics.clone(),
        links: std::sync::OnceLock::new(),
    });
    let server = tokio::spawn(serve(
        listener,
        router(exposed.clone()),
        Limits::default(),
        shutdown.signalled(),
    ));
    tracing::info!(metrics = %args.metrics_listen, "ipclink-operator running");

    let leadership = if args.leader_elect {
        let election = Election {
            namespace: args.leader_elect_namespace.clone(),
            lease: args.leader_elect_lease.clone(),
            identity: instance.clone(),
            duration_seconds: args.leader_elect_duration_seconds,
        };
        match leader::acquire(client.clone(), &election, shutdown.signalled()).await {
            Some(l) => Some(l),
            None => {
                let _ = server.await;
                tracing::info!("stopped");
                return Ok(());
            }
        }
    } else {
        None
    };
    metrics.leader.set(1);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = leadership.map(|l| {
        tokio::spawn(async move {
            if let Err(e) = l
                .hold(async move {
                    let _ = done_rx.await;
                })
                .await
            {
                // Another replica may be reconciling already: stop now, without
                // finishing anything (every step is safe to repeat).
                tracing::error!(error = %format!("{e:#}"), "lost leadership; exiting");
                std::process::exit(1);
            }
        })
    });

    let depths = controller::Depths::default();
    let (changed_tx, changed_rx) = futures::channel::mpsc::channel(1024);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let settings = Settings {
        concurrency: args.concurrency,
        resync: Duration::from_secs(args.resync_seconds),
        fault: std::env::var("IPCLINK_OPERATOR_FAULT").ok(),
        instance,
    };
    let controller = tokio::spawn(controller::run(
        client.clone(),
        settings,
        metrics,
        depths.clone(),
        changed_rx,
        shutdown.signalled(),
        ready_tx,
    ));
    let shared = ready_rx.await.context("the controller did not start")?;
    let _ = exposed.links.set(shared.links);
    let plugins = args.node_plugins.as_ref().map(|(ns, selector)| {
        (
            kube::Api::namespaced(client.clone(), ns),
            selector.clone(),
            args.node_plugin_port,
        )
    });
    if !args.links_endpoints.is_empty() || plugins.is_some() {
        tokio::spawn(depth::run(
            Sources {
                endpoints: args.links_endpoints.clone(),
                plugins,
                interval: Duration::from_secs(args.depth_interval_seconds.max(1)),
                timeout: Duration::from_secs(5),
            },
            depths,
            changed_tx,
            shutdown.clone(),
        ));
    }
    let provisioner =
        (!args.no_provisioner).then(|| tokio::spawn(provision::run(client, shutdown.clone())));
    controller.await.context("controller task")?;
    if let Some(p) = provisioner {
        let _ = p.await;
    }
    // Released only once nothing of this replica writes any more.
    let _ = done_tx.send(());
    if let Some(h) = holder {
        let _ = h.await;
    }
    let _ = server.await;
    tracing::info!("stopped");
    Ok(())
}
