//! The node plugin: the Node service, the kubelet registration, the loops that collect
//! deleted links and apply edits, and the probes of the links on this node.

use std::sync::{Arc, Mutex};

use ipclink_core::Record;
use ipclink_core::probe::{LinkProbe, Observer};
use ipclink_runtime::links::LinkSet;

use super::{Exposed, Started, serve, spawn_endpoints, spawn_every};
use crate::cli::{ChargeMemory, NodeArgs};
use crate::csi::node_server::NodeServer;
use crate::grpc::Node;
use crate::node::charge::Cgroups;
use crate::node::members::PodMembers;
use crate::node::{Charge, NodePlugin, NodeSettings};

/// Where a node keeps its state: a tmpfs, gone at reboot like the mounts it describes.
const STATE_DIR: &str = "/run/ipclink-csi";

/// Runs the node plugin until SIGTERM.
pub(super) async fn run(args: NodeArgs) -> anyhow::Result<()> {
    let cgroups = Cgroups::detect(&args.cgroup_root);
    let settings = NodeSettings {
        charge: match args.charge_memory {
            ChargeMemory::Pod => Charge::FirstMember(cgroups.clone()),
            ChargeMemory::Plugin => Charge::Plugin,
        },
        max_link_bytes: args.max_link_bytes,
        max_node_bytes: args.max_node_bytes,
        max_node_objects: args.max_node_objects,
        max_volumes: i64::from(args.max_volumes_per_node),
        unused_grace: (args.unused_link_grace_seconds > 0)
            .then(|| std::time::Duration::from_secs(args.unused_link_grace_seconds)),
    };
    let started = Started::new(&args.common, STATE_DIR, args.open_selectorless_links).await?;
    if let Some(dir) = &args.registration_dir {
        let endpoint = args
            .kubelet_endpoint
            .clone()
            .unwrap_or_else(|| started.socket.display().to_string());
        crate::registration::spawn(dir, endpoint, started.shutdown.clone())?;
    }
    let plugin = NodePlugin::new(args.node_id, &started.state_dir, started.source, settings)?;
    let shutdown = &started.shutdown;
    if args.gc_interval_seconds > 0 {
        spawn_every(args.gc_interval_seconds, shutdown.clone(), {
            let plugin = plugin.clone();
            move || {
                let plugin = plugin.clone();
                async move { drop(plugin.collect_garbage().await) }
            }
        });
    }
    if args.apply_interval_seconds > 0 {
        spawn_every(args.apply_interval_seconds, shutdown.clone(), {
            let plugin = plugin.clone();
            move || {
                let plugin = plugin.clone();
                async move { drop(plugin.apply_edits().await) }
            }
        });
    }
    let exposed = Exposed {
        registry: started.registry.clone(),
        node: Some(NodeLinks::new(
            plugin.clone(),
            cgroups,
            args.fifo_open_probe,
        )),
    };
    spawn_endpoints(&args.common, exposed, started.kube.clone(), shutdown).await?;
    let router = tonic::transport::Server::builder()
        .add_service(started.identity)
        .add_service(NodeServer::new(Node {
            plugin,
            metrics: started.metrics,
        }));
    serve(
        router,
        &args.common.endpoint,
        started.socket,
        started.incoming,
        started.shutdown,
    )
    .await
}

/// The links of this node, probed through probes kept open between scrapes (they hold
/// descriptors to semaphores and shm regions) and opened again only when the set of
/// links on the node changes.
#[derive(Debug)]
pub(super) struct NodeLinks {
    pub(super) plugin: Arc<NodePlugin>,
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

    pub(super) fn sample(&self) -> Vec<ipclink_core::sample::LinkSample> {
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
