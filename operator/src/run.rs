//! The process: the endpoints, leadership, the caches and the controller, the depth
//! gatherer and the provisioner, wired once.

use crate::cli::{Cli, Command, RunArgs, Scheme};
use crate::gather::{self, Sources};
use crate::leader::{self, Election};
use crate::metrics::Exposed;
use crate::metrics::Synced;
use crate::provision;
use crate::reconcile::status::StatusWriter;
use crate::reconcile::{Context, MANAGER, Settings, Shared, error_policy, is_status, reconcile};
use anyhow::Context as _;
use ipclink_runtime::Shutdown;
use ipclink_runtime::http::{CertSource, own_names, protection, spawn_endpoint};
use ipclink_runtime::links::{probe_router, router, spawn_probes};
use ipclink_runtime::tls::ServedCert;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipclink_core::IpcLink;
use ipclink_core::metrics::OperatorMetrics;
use ipclink_core::model::names::LINK_LABEL;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim};
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};

use crate::cache::linkindex::LinkIndex;
use crate::cache::podcache::{PodIndex, PodWatch};
pub use crate::cache::watch::Reconnect;
use crate::cache::watch::{mark_listed, reflected};
pub use crate::gather::Depths;
use crate::pods::WirePod;

/// Checks that the CRD is served; a clear error otherwise.
pub async fn check_crd(client: &Client) -> anyhow::Result<()> {
    let api: Api<IpcLink> = Api::all(client.clone());
    match api.list(&kube::api::ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => anyhow::bail!(
            "the IpcLink CRD (ipclinks.ipclink.dev) is not installed in this cluster; install it with `ipclink-operator crd | kubectl apply -f -` or the Helm chart"
        ),
        Err(e) => Err(anyhow::anyhow!("cannot list IpcLinks: {e}")),
    }
}

/// Runs the controller until `shutdown` resolves; then finishes in-flight reconciles.
pub async fn controller(
    client: Client,
    settings: Settings,
    metrics: OperatorMetrics,
    depths: Depths,
    links_changed: impl futures::Stream<Item = ObjectRef<IpcLink>> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    ready: tokio::sync::oneshot::Sender<Shared>,
) {
    let links: Api<IpcLink> = Api::all(client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());

    let pod_index = Arc::new(PodIndex::new());

    // Nodes: only whether each exists and is Ready (re-homing of persistent links).
    let (node_store, nodes_listed, node_stream) =
        reflected(nodes, watcher::Config::default(), |n: &mut Node| {
            let conditions = n
                .status
                .take()
                .and_then(|s| s.conditions)
                .map(|cs| cs.into_iter().filter(|c| c.type_ == "Ready").collect());
            n.metadata.managed_fields = None;
            n.metadata.annotations = None;
            n.metadata.labels = None;
            n.spec = None;
            n.status = Some(k8s_openapi::api::core::v1::NodeStatus {
                conditions,
                ..Default::default()
            });
        });

    // Inline links' Leases: which node holds each.
    let (lease_store, leases_listed, lease_stream) = reflected(
        Api::<Lease>::all(client.clone()),
        watcher::Config::default().labels(LINK_LABEL),
        |l: &mut Lease| l.metadata.managed_fields = None,
    );

    let (link_store, link_writer) = reflector::store();
    let links_listed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = links_listed.clone();
    let link_index = Arc::new(LinkIndex::default());
    let names = link_index.clone();
    // Managed fields are the largest part of a link that has a status (a tree of
    // field names per writer), and nothing here reads them.
    let link_stream = reflector(
        link_writer,
        watcher(links, watcher::Config::default())
            .modify(|l: &mut IpcLink| l.metadata.managed_fields = None),
    )
    .inspect(move |e| {
        if let Ok(e) = e {
            names.apply(e);
        }
        mark_listed(e, &flag);
    })
    .applied_objects();
    let controller = Controller::for_stream(link_stream, link_store.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(settings.concurrency))
        .trigger_backoff(Reconnect::default());
    let pods = PodWatch {
        index: pod_index.clone(),
        links: link_index,
        store: link_store.clone(),
    };
    let controller = pods.wakes(controller, Api::<WirePod>::all(client.clone()));
    let _ = ready.send(Shared {
        links: link_store.clone(),
        depths: depths.clone(),
        synced: Synced {
            links: links_listed,
            pods: pod_index.clone(),
            nodes: nodes_listed.clone(),
            leases: leases_listed.clone(),
        },
    });
    let node_links_store = link_store.clone();
    let ctx = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(settings.instance.clone()),
            },
        ),
        client,
        pods: pod_index,
        metrics,
        depths,
        resync: settings.resync,
        status: StatusWriter::new(settings.status_min_interval),
        nodes: node_store,
        nodes_listed,
        leases: lease_store,
        leases_listed,
        rehome_after: settings.rehome_after,
    });
    controller
        .owns(claims, watcher::Config::default().labels(LINK_LABEL))
        // A claim taken or released wakes its link.
        .watches_stream(lease_stream, |lease: Lease| {
            let ns = lease.namespace().unwrap_or_default();
            lease
                .labels()
                .get(LINK_LABEL)
                .map(|link| ObjectRef::new(link).within(&ns))
        })
        // A Node's change or deletion wakes the links that live on it.
        .watches_stream(node_stream, move |node: Node| {
            let name = node.name_any();
            node_links_store
                .state()
                .into_iter()
                .filter(|l| {
                    l.status.as_ref().and_then(|s| s.node.as_deref()) == Some(name.as_str())
                })
                .map(|l| ObjectRef::from_obj(&*l))
                .collect::<Vec<_>>()
        })
        .reconcile_on(links_changed)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "controller");
            }
        })
        .await;
}

/// Runs one command of the binary.
pub fn main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
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
                crate::remove::run(client, plugins, Duration::from_secs(args.timeout_seconds)).await
            })
        }),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    ipclink_runtime::tokio_runtime(None).context("tokio runtime")
}

fn print_crd() -> anyhow::Result<()> {
    use std::io::Write;
    let yaml = crate::crd::crd_yaml().context("serializing the CRD")?;
    match std::io::stdout().lock().write_all(yaml.as_bytes()) {
        // `ipclink-operator crd | head` is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing the CRD to stdout"),
    }
}

/// `run`: everything of one replica, until SIGTERM.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // The one signal watcher, installed before anything starts.
    let shutdown = Shutdown::install().context("installing the signal handler")?;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes API: set KUBECONFIG or run in a cluster")?;
    check_crd(&client).await?;

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
    let cert = match (args.metrics.cert_files(), &issued) {
        (Some(files), _) => files,
        (None, Some(i)) => {
            let served = ServedCert::self_signed(own_names(args.metrics_listen))?;
            served.set_pem(i.cert.as_bytes(), i.key.as_bytes())?;
            CertSource::Served(served)
        }
        _ => CertSource::Made,
    };
    let protected = protection(
        args.metrics_listen,
        args.metrics.metrics_auth,
        cert,
        args.metrics.metrics_accept_api_audience,
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
    spawn_probes(
        args.metrics.probe_listen,
        exposed.clone(),
        shutdown.signalled(),
    )
    .await?;
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

    let depths = Depths::default();
    let (changed_tx, changed_rx) = futures::channel::mpsc::channel(1024);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let settings = Settings {
        concurrency: args.concurrency,
        resync: Duration::from_secs(args.resync_seconds),
        instance,
        status_min_interval: Duration::from_secs(args.status_min_interval_seconds),
        rehome_after: (args.rehome_after_seconds > 0)
            .then(|| Duration::from_secs(args.rehome_after_seconds)),
    };
    let round_metrics = metrics.clone();
    let controller = tokio::spawn(controller(
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
        tokio::spawn(gather::run(
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
            move |round: gather::Round| {
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
