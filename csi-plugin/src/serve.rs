//! Wiring of a running plugin: the CSI socket, the kubelet registration socket, the
//! garbage-collection loop and the metrics endpoint, all stopped by one shutdown.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use ipclink_core::Record;
use ipclink_core::metrics::{CsiMetrics, render};
use ipclink_core::model::names::DRIVER_NAME;
use ipclink_core::probe::{LinkProbe, Observer};
use ipclink_core::report::LinksReport;
use ipclink_runtime::Shutdown;
use ipclink_runtime::http::{CertSource, own_names, protection, spawn_endpoint};
use ipclink_runtime::links::{Exposition, LinkSet, probe_router, router, spawn_probes};
use ipclink_runtime::tls::ServedCert;
use ipclink_runtime::unix::bind_unix;

use crate::cli::{ChargeMemory, Cli, Common, Role};
use crate::controller::ControllerPlugin;
use crate::csi::controller_server::ControllerServer;
use crate::csi::identity_server::IdentityServer;
use crate::csi::node_server::NodeServer;
use crate::grpc::{Controller, Identity, Node};
use crate::node::charge::Cgroups;
use crate::node::members::PodMembers;
use crate::node::{Charge, NodePlugin, NodeSettings};
use crate::source::{DirSource, KubeSource, LinkSource};

/// How long in-flight calls get after SIGTERM.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the plugin the command line asks for until SIGTERM or SIGINT.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let shutdown = Shutdown::install()?;
    let mut fifo_probe = false;
    let mut open_selectorless = false;
    let mut cgroups = Cgroups::detect(std::path::Path::new("/sys/fs/cgroup"));
    let (common, node, registration, (gc_interval, apply_interval)) = match cli.role {
        Role::Node {
            common,
            node_id,
            registration_dir,
            kubelet_endpoint,
            gc_interval_seconds,
            apply_interval_seconds,
            unused_link_grace_seconds,
            charge_memory,
            cgroup_root,
            max_link_bytes,
            max_node_bytes,
            max_node_objects,
            max_volumes_per_node,
            fifo_open_probe,
            open_selectorless_links,
        } => {
            fifo_probe = fifo_open_probe;
            open_selectorless = open_selectorless_links;
            cgroups = Cgroups::detect(&cgroup_root);
            let settings = NodeSettings {
                charge: match charge_memory {
                    ChargeMemory::Pod => Charge::FirstMember(Cgroups::detect(&cgroup_root)),
                    ChargeMemory::Plugin => Charge::Plugin,
                },
                max_link_bytes,
                max_node_bytes,
                max_node_objects,
                max_volumes: i64::from(max_volumes_per_node),
                unused_grace: (unused_link_grace_seconds > 0)
                    .then(|| std::time::Duration::from_secs(unused_link_grace_seconds)),
            };
            (
                common,
                Some((node_id, settings)),
                registration_dir.map(|d| (d, kubelet_endpoint)),
                (gc_interval_seconds, apply_interval_seconds),
            )
        }
        Role::Controller { common } => (common, None, None, (0, 0)),
        Role::Charge { .. } => bail!("`charge` is started by the node plugin, not by hand"),
    };
    let state_dir = common.state_dir.clone().unwrap_or_else(|| {
        PathBuf::from(if node.is_some() {
            "/run/ipclink-csi"
        } else {
            "/var/lib/ipclink-csi"
        })
    });
    let registry = prometheus::Registry::new();
    let metrics = CsiMetrics::new(&registry)?;
    let source = match &common.links_dir {
        Some(dir) => {
            LinkSource::Dir(DirSource::new(dir.clone()).open_selectorless(open_selectorless))
        }
        None => LinkSource::Kube(
            KubeSource::connect()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
    };
    // The metrics reviewer uses the source's API client, when it has one.
    let kube = match &source {
        LinkSource::Kube(k) => Some(k.client()),
        LinkSource::Dir(_) => None,
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
    let listener = bind_unix(&path).with_context(|| format!("bind {}", path.display()))?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let identity = IdentityServer::new(Identity {
        metrics: metrics.clone(),
    });
    if let Some((dir, kubelet_endpoint)) = registration {
        let endpoint = kubelet_endpoint.unwrap_or_else(|| path.display().to_string());
        spawn_registration(&dir, endpoint, shutdown.clone())?;
    }
    let mut server = tonic::transport::Server::builder();
    let router = match node {
        Some((node_id, settings)) => {
            let plugin = NodePlugin::new(node_id, &state_dir, source, settings)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if gc_interval > 0 {
                spawn_every(gc_interval, shutdown.clone(), {
                    let plugin = plugin.clone();
                    move || {
                        let plugin = plugin.clone();
                        async move { drop(plugin.collect_garbage().await) }
                    }
                });
            }
            if apply_interval > 0 {
                spawn_every(apply_interval, shutdown.clone(), {
                    let plugin = plugin.clone();
                    move || {
                        let plugin = plugin.clone();
                        async move { drop(plugin.apply_edits().await) }
                    }
                });
            }
            let exposed = Exposed {
                registry: registry.clone(),
                node: Some(NodeLinks::new(plugin.clone(), cgroups.clone(), fifo_probe)),
            };
            spawn_endpoints(&common, exposed, kube.clone(), &shutdown).await?;
            server
                .add_service(identity)
                .add_service(NodeServer::new(Node { plugin, metrics }))
        }
        None => {
            let plugin =
                ControllerPlugin::new(&state_dir, source).map_err(|e| anyhow::anyhow!("{e}"))?;
            let exposed = Exposed {
                registry: registry.clone(),
                node: None,
            };
            spawn_endpoints(&common, exposed, kube.clone(), &shutdown).await?;
            server
                .add_service(identity)
                .add_service(ControllerServer::new(Controller {
                    plugin: Arc::new(plugin),
                    metrics,
                }))
        }
    };
    tracing::info!(endpoint = %common.endpoint, "serving CSI");
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
    let _ = std::fs::remove_file(&path);
    if let Err(e) = result {
        bail!("gRPC server: {e}");
    }
    Ok(())
}

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

fn spawn_registration(dir: &Path, endpoint: String, shutdown: Shutdown) -> anyhow::Result<()> {
    use crate::registration::registration_server::RegistrationServer;
    let socket = dir.join(format!("{DRIVER_NAME}-reg.sock"));
    let listener =
        bind_unix(&socket).with_context(|| format!("registration socket {}", socket.display()))?;
    tracing::info!(socket = %socket.display(), "serving kubelet plugin registration");
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(crate::grpc::Registration {
                endpoint,
            }))
            .serve_with_incoming_shutdown(
                // The kubelet sends the socket path as :authority; see authority.rs.
                tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    |conn| conn.map(crate::authority::LocalAuthority::new),
                ),
                shutdown.signalled(),
            )
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "registration server failed");
        }
        let _ = std::fs::remove_file(&socket);
    });
    Ok(())
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
        let cert = match (
            &common.tls_cert_file,
            &common.tls_key_file,
            &common.metrics_tls_secret,
        ) {
            (Some(c), Some(k), _) => CertSource::Files(c.clone(), k.clone()),
            (_, _, Some(secret)) => {
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
            common.metrics_auth,
            cert,
            common.metrics_accept_api_audience,
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
    spawn_probes(common.probe_listen, exposed, shutdown.signalled()).await?;
    Ok(())
}

/// The links of this node, probed through probes kept open between scrapes (they hold
/// descriptors to semaphores and shm regions) and opened again only when the set of
/// links on the node changes.
#[derive(Debug)]
struct NodeLinks {
    plugin: Arc<NodePlugin>,
    probes: Mutex<(Vec<Record>, LinkSet)>,
}

impl NodeLinks {
    /// The links of `plugin`'s node, with who holds their objects observed among the
    /// processes of the pods it published them to.
    fn new(plugin: Arc<NodePlugin>, cgroups: Cgroups, fifo_open_probe: bool) -> Self {
        let members = PodMembers::new(plugin.clone(), cgroups);
        let observer = Observer::new(Box::new(members), true, fifo_open_probe);
        NodeLinks {
            plugin,
            probes: Mutex::new((Vec::new(), LinkSet::default().observed_by(observer))),
        }
    }

    fn sample(&self) -> Vec<ipclink_core::sample::LinkSample> {
        let store = self.plugin.store();
        let (records, _) = store.records();
        let mut cached = self.probes.lock().unwrap_or_else(|p| p.into_inner());
        if cached.0 != records {
            // The `node` label every series gets: `,node="ID"`.
            let node_label = self.plugin.node_id().len() + 8;
            let opened = records
                .iter()
                .filter_map(|r| LinkProbe::of_record(store, r).ok())
                .map(|p| p.with_extra_label_bytes(node_label))
                .collect();
            cached.1.set_probes(opened);
            cached.0 = records;
        }
        cached.1.sample()
    }
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
