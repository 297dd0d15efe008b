//! `ipclink-operator`: `crd` prints the CustomResourceDefinition; `run` reconciles;
//! `remove-links` is the chart's uninstall hook.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ipclink_core::metrics::OperatorMetrics;
use ipclink_operator::cli::{Cli, Command, RunArgs, Scheme};
use ipclink_operator::controller::{self, Settings};
use ipclink_operator::depth::{self, Sources};
use ipclink_operator::leader::{self, Election};
use ipclink_operator::metrics::Exposed;
use ipclink_operator::provision;
use ipclink_runtime::Shutdown;
use ipclink_runtime::http::{CertSource, own_names, protection, spawn_endpoint};
use ipclink_runtime::links::{probe_router, router, spawn_probes};
use ipclink_runtime::tls::ServedCert;

/// Keeps glibc's malloc to one arena (unless `MALLOC_ARENA_MAX` says otherwise), set
/// before any thread starts. By default each thread that allocates may get an arena of
/// its own; the watch streams decode large lists on whichever worker runs them, and the
/// freed space stays spread over the arenas: with 2,000 links the resident size was
/// 146 MiB with the default, 139 MiB with two arenas and 89 MiB with one, at the same
/// reconcile rate (`cargo bench --bench links`; small allocations go through each
/// thread's own cache, not the arena lock).
#[allow(unsafe_code)]
fn cap_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a parameter of the allocator; called before any
        // other thread exists.
        unsafe {
            nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
        }
    }
}

fn main() {
    cap_malloc_arenas();
    ipclink_runtime::init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => print_crd(),
        Command::Run(args) => runtime().and_then(|rt| rt.block_on(run(*args))),
        Command::RemoveLinks(args) => runtime().and_then(|rt| {
            rt.block_on(async {
                let client = kube::Client::try_default()
                    .await
                    .context("no Kubernetes API: set KUBECONFIG or run in a cluster")?;
                let secure = args.access.secure(None, true)?;
                let plugins = args.node_plugins.map(|(ns, selector)| Sources {
                    endpoints: Vec::new(),
                    plugins: Some((
                        kube::Api::namespaced(client.clone(), &ns),
                        selector,
                        args.node_plugin_port,
                    )),
                    interval: Duration::from_secs(1),
                    timeout: Duration::from_secs(5),
                    concurrency: 64,
                    stale_after: 1,
                    secure,
                    plugins_https: args.access.node_plugin_scheme == Scheme::Https,
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

    // The release's metrics certificate: filled now if the Secret is empty, kept filled.
    let issued = match &args.metrics_tls_secret {
        Some(at) => {
            let issued = ipclink_runtime::metrics_tls::ensure(
                &client,
                at,
                &args.metrics_tls_names,
                Duration::from_secs(60),
            )
            .await
            .with_context(|| format!("--metrics-tls-secret {at}"))?;
            ipclink_runtime::metrics_tls::spawn_keep(
                client.clone(),
                at.clone(),
                issued.clone(),
                Duration::from_secs(args.metrics_tls_check_seconds.max(1)),
                shutdown.signalled(),
            );
            Some(issued)
        }
        None => None,
    };
    let cert = match (&args.tls_cert_file, &args.tls_key_file, &issued) {
        (Some(c), Some(k), _) => CertSource::Files(c.clone(), k.clone()),
        (_, _, Some(i)) => {
            let served = ServedCert::self_signed(own_names(args.metrics_listen))?;
            served.set_pem(i.cert.as_bytes(), i.key.as_bytes())?;
            CertSource::Served(served)
        }
        _ => CertSource::Made,
    };
    let protected = protection(
        args.metrics_listen,
        args.metrics_auth,
        cert,
        args.metrics_accept_api_audience,
        Some(client.clone()),
    )
    .await?;
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
        synced: std::sync::OnceLock::new(),
    });
    let server = spawn_endpoint(
        "--metrics-listen",
        args.metrics_listen,
        router(exposed.clone()),
        probe_router(exposed.clone()),
        protected.clone(),
        shutdown.signalled(),
    )
    .await?;
    spawn_probes(args.probe_listen, exposed.clone(), shutdown.signalled()).await?;
    tracing::info!(
        metrics = %args.metrics_listen,
        auth = if protected.is_some() { "kubernetes (https)" } else { "none (http)" },
        "ipclink-operator running"
    );

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
        pod_cache: args.pod_cache,
        status_min_interval: Duration::from_secs(args.status_min_interval_seconds),
        rehome_after: (args.rehome_after_seconds > 0)
            .then(|| Duration::from_secs(args.rehome_after_seconds)),
    };
    let round_metrics = metrics.clone();
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
    let _ = exposed.synced.set(shared.synced);
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
                timeout: Duration::from_secs(args.depth_timeout_seconds),
                concurrency: usize::from(args.depth_concurrency),
                stale_after: args.depth_stale_intervals,
                secure: args
                    .access
                    .secure(issued.as_ref().map(|i| i.ca.as_bytes()), false)?,
                plugins_https: args.access.node_plugin_scheme == Scheme::Https,
            },
            depths,
            changed_tx,
            move |round: depth::Round| {
                round_metrics
                    .depth_rounds
                    .with_label_values::<&str>(&[])
                    .observe(round.took.as_secs_f64());
                for (state, n) in [
                    ("answered", round.answered),
                    ("failed", round.failed),
                    ("stale", round.stale),
                ] {
                    round_metrics
                        .depth_endpoints
                        .with_label_values(&[state])
                        .set(n as i64);
                }
            },
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
