//! Wiring of a running plugin: the CSI socket, the metrics endpoint and the drain on
//! SIGTERM, shared by both roles (`node`: the kubelet registration, the
//! garbage-collection and edit loops, the links' probes; `controller`).

mod controller;
mod node;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use ipclink_core::metrics::{CsiMetrics, render};
use ipclink_core::report::LinksReport;
use ipclink_runtime::Shutdown;
use ipclink_runtime::http::{CertSource, own_names, protection, spawn_endpoint};
use ipclink_runtime::links::{Exposition, probe_router, router, spawn_probes};
use ipclink_runtime::tls::ServedCert;
use ipclink_runtime::unix::bind_unix;
use tokio_stream::wrappers::UnixListenerStream;

use crate::cli::{Cli, Common, Role};
use crate::csi::identity_server::IdentityServer;
use crate::grpc::Identity;
use crate::source::{DirSource, KubeSource, LinkSource};
use node::NodeLinks;

/// Runs the plugin the command line asks for until SIGTERM or SIGINT.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.role {
        Role::Node(args) => node::run(args).await,
        Role::Controller(args) => controller::run(args).await,
        Role::Charge(_) => bail!("`charge` is started by the node plugin, not by hand"),
    }
}

/// What both roles start with: the shutdown watcher, the metrics registry, the link
/// source, and the bound CSI socket.
struct Started {
    shutdown: Shutdown,
    registry: prometheus::Registry,
    metrics: CsiMetrics,
    source: LinkSource,
    /// The source's API client, which the metrics reviewer uses too.
    kube: Option<kube::Client>,
    state_dir: PathBuf,
    /// The CSI socket's path, and the connections to it.
    socket: PathBuf,
    incoming: UnixListenerStream,
    identity: IdentityServer<Identity>,
}

impl Started {
    /// Installs the signal handler, opens the link source and binds the CSI socket;
    /// `default_state` is the role's state directory unless --state-dir says otherwise.
    async fn new(
        common: &Common,
        default_state: &str,
        open_selectorless: bool,
    ) -> anyhow::Result<Started> {
        let shutdown = Shutdown::install()?;
        let state_dir = common
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(default_state));
        let registry = prometheus::Registry::new();
        let metrics = CsiMetrics::new(&registry)?;
        let source = match &common.links_dir {
            Some(dir) => {
                LinkSource::Dir(DirSource::new(dir.clone()).open_selectorless(open_selectorless))
            }
            None => LinkSource::Kube(KubeSource::connect().await?),
        };
        let kube = match &source {
            LinkSource::Kube(k) => Some(k.client()),
            LinkSource::Dir(_) => None,
        };
        let socket = common
            .endpoint
            .strip_prefix("unix://")
            .map(PathBuf::from)
            .with_context(|| {
                format!(
                    "--endpoint {:?}: only unix://PATH is served",
                    common.endpoint
                )
            })?;
        let listener = bind_unix(&socket).with_context(|| format!("bind {}", socket.display()))?;
        let identity = IdentityServer::new(Identity {
            metrics: metrics.clone(),
        });
        Ok(Started {
            shutdown,
            registry,
            metrics,
            source,
            kube,
            state_dir,
            socket,
            incoming: UnixListenerStream::new(listener),
            identity,
        })
    }
}

/// Serves `router` on the CSI socket until SIGTERM, then drains in-flight calls for a
/// bounded time and removes the socket.
async fn serve(
    router: tonic::transport::server::Router,
    endpoint: &str,
    socket: PathBuf,
    incoming: UnixListenerStream,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    tracing::info!(endpoint = %endpoint, "serving CSI");
    let server = router.serve_with_incoming_shutdown(incoming, shutdown.signalled());
    tokio::pin!(server);
    // A kubelet keeps its connection open: drain in-flight calls for a bounded time, then
    // exit rather than wait for clients to hang up.
    let result = tokio::select! {
        r = &mut server => r,
        _ = async {
            shutdown.wait().await;
            tokio::time::sleep(DRAIN).await;
        } => {
            tracing::warn!("clients still connected after the drain time; exiting");
            Ok(())
        }
    };
    let _ = std::fs::remove_file(&socket);
    if let Err(e) = result {
        bail!("gRPC server: {e}");
    }
    Ok(())
}

/// How long in-flight calls get after SIGTERM.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `work` every `seconds` until shutdown.
fn spawn_every<F, Fut>(seconds: u64, shutdown: Shutdown, work: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(seconds));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait() => return,
            }
            work().await;
        }
    });
}

/// Serves `--metrics-listen` (metrics, links, health) and `--probe-listen` (health only,
/// on its own connection slots), each when set.
async fn spawn_endpoints(
    common: &Common,
    exposed: Exposed,
    kube: Option<kube::Client>,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let exposed: Arc<dyn Exposition> = Arc::new(exposed);
    if let Some(addr) = common.metrics_listen {
        let cert = match (common.metrics.cert_files(), &common.metrics_tls_secret) {
            (Some(files), _) => files,
            (None, Some(secret)) => {
                // Made now, replaced by the Secret's once the operator has filled it.
                let served = ServedCert::self_signed(own_names(addr))?;
                let client = match &kube {
                    Some(c) => c.clone(),
                    None => kube::Client::try_default().await.map_err(|e| {
                        anyhow::anyhow!("--metrics-tls-secret needs the Kubernetes API: {e}")
                    })?,
                };
                ipclink_runtime::metrics_tls::spawn_follow(
                    client,
                    secret.clone(),
                    served.clone(),
                    std::time::Duration::from_secs(60),
                    shutdown.signalled(),
                );
                CertSource::Served(served)
            }
            _ => CertSource::Made,
        };
        let protected = protection(
            addr,
            common.metrics.metrics_auth,
            cert,
            common.metrics.metrics_accept_api_audience,
            kube,
        )
        .await?;
        tracing::info!(
            metrics = %addr,
            auth = if protected.is_some() { "kubernetes (https)" } else { "none (http)" },
            "serving metrics"
        );
        let (app, health) = (router(exposed.clone()), probe_router(exposed.clone()));
        let stop = shutdown.signalled();
        spawn_endpoint("--metrics-listen", addr, app, health, protected, stop).await?;
    }
    spawn_probes(common.metrics.probe_listen, exposed, shutdown.signalled()).await?;
    Ok(())
}

/// What a plugin shows on `--metrics-listen`: its request families and, on a node, the
/// channel families of every link there and `/v1/links` in the sidecar's format.
#[derive(Debug)]
struct Exposed {
    registry: prometheus::Registry,
    node: Option<NodeLinks>,
}

impl Exposition for Exposed {
    fn metrics(&self, out: &mut String) {
        render(&self.registry, out);
        if let Some(node) = &self.node {
            // The node labels every series, as the operator's ipclink_link_info does:
            // alerts join the two on it.
            let id = node.plugin.node_id();
            ipclink_core::metrics::render_channels(&node.sample(), &[("node", id)], out);
        }
    }

    fn links(&self) -> Option<LinksReport> {
        self.node.as_ref().map(|n| LinksReport {
            links: n.sample(),
            members: Vec::new(),
        })
    }
}
