//! `ipclink-csi node|controller`: flags and wiring; the work is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ipclink_core::LinkPlan;
use ipclink_core::probe::LinkProbe;
use ipclink_sidecar::app::LinkSet;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use ipclink_core::metrics::{CsiMetrics, render, render_channels};
use ipclink_csi::controller::ControllerPlugin;
use ipclink_csi::csi::controller_server::ControllerServer;
use ipclink_csi::csi::identity_server::IdentityServer;
use ipclink_csi::csi::node_server::NodeServer;
use ipclink_csi::grpc::{Controller, Identity, Node};
use ipclink_csi::node::NodePlugin;
use ipclink_csi::source::{DirSource, KubeSource, LinkSource};

/// How long in-flight calls get after SIGTERM.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The ipclink CSI driver (csi.ipclink.dev).
#[derive(Debug, Parser)]
#[command(name = "ipclink-csi", version, about)]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// Node plugin: Identity and Node services.
    Node {
        #[command(flatten)]
        common: Common,
        /// This node's name (the topology value of topology.ipclink.dev/node).
        #[arg(long, env = "NODE_ID")]
        node_id: String,
        /// The kubelet's plugin registration directory (e.g. /var/lib/kubelet/plugins_registry);
        /// when set, the registration socket csi.ipclink.dev-reg.sock is served there.
        #[arg(long, env = "IPCLINK_REGISTRATION_DIR")]
        registration_dir: Option<PathBuf>,
        /// The CSI socket path as the kubelet sees it [default: the --endpoint path].
        #[arg(long, env = "IPCLINK_KUBELET_ENDPOINT")]
        kubelet_endpoint: Option<String>,
        /// Seconds between two looks for links that were deleted after their last
        /// member unmounted them (their tmpfs is then removed); 0 never looks.
        #[arg(long, env = "IPCLINK_GC_INTERVAL_SECONDS", default_value_t = 30)]
        gc_interval_seconds: u64,
    },
    /// Controller plugin: Identity and Controller services.
    Controller {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, Args)]
struct Common {
    /// gRPC endpoint, unix://PATH.
    #[arg(
        long,
        env = "CSI_ENDPOINT",
        default_value = "unix:///run/ipclink/csi.sock"
    )]
    endpoint: String,
    /// Directory for state files (and, on a node, the links' tmpfs mounts).
    /// [default: node /run/ipclink-csi — tmpfs, gone at reboot like the mounts it
    /// describes; controller /var/lib/ipclink-csi — its volumes outlive reboots]
    #[arg(long, env = "IPCLINK_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Directory of IpcLink (and Pod) YAML: the link source when running standalone.
    /// Without it, links and pods come from the Kubernetes API (in-cluster config or
    /// KUBECONFIG).
    #[arg(long, env = "IPCLINK_LINKS_DIR")]
    links_dir: Option<PathBuf>,
    /// Serve /metrics here.
    #[arg(long, env = "IPCLINK_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
}

fn main() -> anyhow::Result<()> {
    ipclink_sidecar::init_logging();
    let cli = Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let shutdown = ipclink_sidecar::shutdown_signal()?;
    let (common, node_id, registration, gc_interval) = match cli.role {
        Role::Node {
            common,
            node_id,
            registration_dir,
            kubelet_endpoint,
            gc_interval_seconds,
        } => (
            common,
            Some(node_id),
            registration_dir.map(|d| (d, kubelet_endpoint)),
            gc_interval_seconds,
        ),
        Role::Controller { common } => (common, None, None, 0),
    };
    let state_dir = common.state_dir.clone().unwrap_or_else(|| {
        PathBuf::from(if node_id.is_some() {
            "/run/ipclink-csi"
        } else {
            "/var/lib/ipclink-csi"
        })
    });
    let registry = prometheus::Registry::new();
    let metrics = CsiMetrics::new(&registry)?;
    let source = match &common.links_dir {
        Some(dir) => LinkSource::Dir(DirSource::new(dir.clone())),
        None => LinkSource::Kube(
            KubeSource::connect()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
    };
    let path = common
        .endpoint
        .strip_prefix("unix://")
        .map(PathBuf::from)
        .with_context(|| {
            format!(
                "--endpoint {:?}: only unix://PATH is served",
                common.endpoint
            )
        })?;
    let listener = ipclink_csi::bind_socket(&path)?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let identity = IdentityServer::new(Identity {
        metrics: metrics.clone(),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some((dir, kubelet_endpoint)) = registration {
        let endpoint = kubelet_endpoint.unwrap_or_else(|| path.display().to_string());
        spawn_registration(&dir, endpoint, stop_rx.clone())?;
    }
    let mut server = tonic::transport::Server::builder();
    let router = match node_id {
        Some(node_id) => {
            let plugin =
                NodePlugin::new(node_id, &state_dir, source).map_err(|e| anyhow::anyhow!("{e}"))?;
            if gc_interval > 0 {
                let plugin = plugin.clone();
                let mut stop = stop_rx.clone();
                tokio::spawn(async move {
                    let mut tick =
                        tokio::time::interval(std::time::Duration::from_secs(gc_interval));
                    loop {
                        tokio::select! {
                            _ = tick.tick() => {}
                            _ = stop.wait_for(|s| *s) => return,
                        }
                        plugin.collect_garbage();
                    }
                });
            }
            if let Some(addr) = common.metrics_listen {
                spawn_metrics(
                    addr,
                    registry.clone(),
                    Some(plugin.clone()),
                    stop_rx.clone(),
                )
                .await?;
            }
            server
                .add_service(identity)
                .add_service(NodeServer::new(Node { plugin, metrics }))
        }
        None => {
            let plugin =
                ControllerPlugin::new(&state_dir, source).map_err(|e| anyhow::anyhow!("{e}"))?;
            if let Some(addr) = common.metrics_listen {
                spawn_metrics(addr, registry.clone(), None, stop_rx.clone()).await?;
            }
            server
                .add_service(identity)
                .add_service(ControllerServer::new(Controller {
                    plugin: Arc::new(plugin),
                    metrics,
                }))
        }
    };
    tracing::info!(endpoint = %common.endpoint, "serving CSI");
    let mut stopping = stop_rx.clone();
    let server = router.serve_with_incoming_shutdown(incoming, async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    tokio::pin!(server);
    // A kubelet keeps its connection open: drain in-flight calls for a bounded time, then
    // exit rather than wait for clients to hang up.
    let result = tokio::select! {
        r = &mut server => r,
        _ = async {
            let _ = stopping.wait_for(|s| *s).await;
            tokio::time::sleep(DRAIN).await;
        } => {
            tracing::warn!("clients still connected after the drain time; exiting");
            Ok(())
        }
    };
    let _ = std::fs::remove_file(&path);
    if let Err(e) = result {
        bail!("gRPC server: {e}");
    }
    Ok(())
}

fn spawn_registration(
    dir: &std::path::Path,
    endpoint: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use ipclink_csi::registration::registration_server::RegistrationServer;
    let socket = dir.join(format!("{}-reg.sock", ipclink_csi::grpc::DRIVER_NAME));
    let listener = ipclink_csi::bind_socket(&socket)
        .with_context(|| format!("registration socket {}", socket.display()))?;
    tracing::info!(socket = %socket.display(), "serving kubelet plugin registration");
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(ipclink_csi::grpc::Registration {
                endpoint,
            }))
            .serve_with_incoming_shutdown(
                // The kubelet sends the socket path as :authority; see authority.rs.
                tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    |conn| conn.map(ipclink_csi::authority::LocalAuthority::new),
                ),
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            )
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "registration server failed");
        }
        let _ = std::fs::remove_file(&socket);
    });
    Ok(())
}

async fn spawn_metrics(
    addr: SocketAddr,
    registry: prometheus::Registry,
    node: Option<Arc<NodePlugin>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("--metrics-listen {addr}"))?;
    // Probes keep descriptors to semaphores and shm regions open between scrapes; they
    // are opened again only when the set of links on this node changes.
    let probes: Arc<Mutex<(Vec<LinkPlan>, LinkSet)>> =
        Arc::new(Mutex::new((Vec::new(), LinkSet::new(Vec::new()))));
    // Samples this node's links through the cached probes (reopened only when the set
    // of links changes); `None` for the controller, which has no links.
    let sample = move || -> Option<Vec<ipclink_core::probe::LinkSample>> {
        let node = node.as_ref()?;
        let store = node.store();
        let (plans, _) = store.records();
        let mut cached = probes.lock().unwrap_or_else(|p| p.into_inner());
        if cached.0 != plans {
            let opened = plans
                .iter()
                .filter_map(|p| LinkProbe::open(store, p).ok())
                .collect();
            *cached = (plans, LinkSet::new(opened));
        }
        Some(cached.1.sample())
    };
    let sample = Arc::new(sample);
    let for_links = sample.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                let sample = sample.clone();
                async move {
                    let mut text = render(&registry);
                    if let Ok(Some(samples)) = tokio::task::spawn_blocking(move || sample()).await {
                        render_channels(&samples, &[], &mut text);
                    }
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        text,
                    )
                }
            }),
        )
        // The same format as ipclink-sidecar's, gathered by the operator.
        .route(
            "/v1/links",
            get(move || {
                let sample = for_links.clone();
                async move {
                    let links = tokio::task::spawn_blocking(move || sample())
                        .await
                        .ok()
                        .flatten()
                        .unwrap_or_default();
                    axum::Json(ipclink_sidecar::app::LinksReport {
                        links,
                        members: Vec::new(),
                    })
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    tokio::spawn(async move {
        let _ = ipclink_sidecar::http::serve(listener, app, Default::default(), async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    });
    Ok(())
}
