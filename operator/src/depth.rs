//! Channel depths gathered from the node plugins' (or sidecars') `/v1/links` endpoints
//! and folded into `status.channels` at most once per interval per link.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipclink_core::IpcLink;
use ipclink_core::probe::LinkSample;
use ipclink_core::spec::ChannelStatus;
use ipclink_runtime::Shutdown;
use kube::runtime::reflector::ObjectRef;

/// Latest channel depths per (namespace, link), from the node plugins.
pub type Depths = Arc<Mutex<HashMap<(String, String), LinkDepths>>>;

/// Where depths come from.
#[derive(Clone)]
pub struct Sources {
    /// (node, `HOST:PORT`) of each endpoint given on the command line.
    pub endpoints: Vec<(String, String)>,
    /// Node plugin pods found each round: their API, label selector and metrics port;
    /// each running pod is gathered at `podIP:port` and labelled with its node.
    pub plugins: Option<(kube::Api<k8s_openapi::api::core::v1::Pod>, String, u16)>,
    /// Time between two rounds.
    pub interval: Duration,
    /// Time allowed for one endpoint.
    pub timeout: Duration,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("endpoints", &self.endpoints)
            .field("plugins", &self.plugins.as_ref().map(|(_, s, p)| (s, p)))
            .finish_non_exhaustive()
    }
}

/// The endpoints of this round: the static ones, then the running node plugin pods, as
/// (node, address).
pub async fn endpoints(sources: &Sources) -> Vec<(String, String)> {
    let mut all = sources.endpoints.clone();
    if let Some((api, selector, port)) = &sources.plugins {
        match api
            .list(&kube::api::ListParams::default().labels(selector))
            .await
        {
            Ok(pods) => all.extend(pods.items.into_iter().filter_map(|p| {
                let node = p.spec.as_ref()?.node_name.clone()?;
                let status = p.status.as_ref()?;
                let ip = status.pod_ip.clone()?;
                (status.phase.as_deref() == Some("Running")).then(|| {
                    let addr = if ip.contains(':') {
                        format!("[{ip}]:{port}")
                    } else {
                        format!("{ip}:{port}")
                    };
                    (node, addr)
                })
            })),
            Err(e) => tracing::warn!(selector, error = %e, "cannot list node plugin pods"),
        }
    }
    all
}

/// One GET of `http://{endpoint}/v1/links`: its links.
pub async fn fetch(endpoint: &str, timeout: Duration) -> anyhow::Result<Vec<LinkSample>> {
    Ok(ipclink_runtime::client::links(endpoint, timeout)
        .await?
        .links)
}

/// Most objects members created that a link's status lists (the metrics list up to
/// 1,000; a status is read by people and stored in etcd).
pub const MAX_CREATED_IN_STATUS: usize = 64;

/// The depths of one link as its status shows them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkDepths {
    /// Every declared object, then at most [`MAX_CREATED_IN_STATUS`] created ones.
    pub channels: Vec<ChannelStatus>,
    /// How many objects members created, in all.
    pub created: u64,
}

/// What a link's status shows of a sample.
pub fn channel_status(sample: &LinkSample) -> LinkDepths {
    let channels = sample.channels.iter().map(|c| ChannelStatus {
        name: c.info.name.clone(),
        kind: c.info.kind.clone(),
        // A region's size or resident memory is no queue: shm has no depth here.
        queue_bytes: c.queue_bytes,
        value: None,
        discovered: c.info.discovered,
    });
    let semaphores = sample.semaphores.iter().map(|s| ChannelStatus {
        name: s.info.name.clone(),
        kind: s.info.kind.clone(),
        queue_bytes: None,
        value: s.value,
        discovered: s.info.discovered,
    });
    let (created, declared): (Vec<_>, Vec<_>) =
        channels.chain(semaphores).partition(|c| c.discovered);
    let total = created.len() as u64 + sample.unreported_objects;
    let mut channels = declared;
    channels.extend(created.into_iter().take(MAX_CREATED_IN_STATUS));
    LinkDepths {
        channels,
        created: total,
    }
}

/// Gathers every `interval` until shutdown; links whose depths changed are sent on
/// `changed` (their next status write carries the new depths).
pub async fn run(
    sources: Sources,
    depths: Depths,
    changed: futures::channel::mpsc::Sender<ObjectRef<IpcLink>>,
    shutdown: Shutdown,
) {
    let mut changed = changed;
    let mut tick = tokio::time::interval(sources.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        let mut next: HashMap<(String, String), LinkDepths> = HashMap::new();
        for (node, endpoint) in endpoints(&sources).await {
            match fetch(&endpoint, sources.timeout).await {
                Ok(links) => {
                    for l in &links {
                        next.insert(
                            (l.namespace.to_string(), l.name.to_string()),
                            channel_status(l),
                        );
                    }
                }
                Err(e) => tracing::warn!(node, endpoint, error = %e, "cannot gather depths"),
            }
        }
        let wake: Vec<ObjectRef<IpcLink>> = {
            let mut current = depths.lock().unwrap_or_else(|p| p.into_inner());
            let wake = next
                .iter()
                .filter(|(k, v)| current.get(*k) != Some(*v))
                .map(|((ns, name), _)| ObjectRef::new(name).within(ns))
                .collect();
            *current = next;
            wake
        };
        for r in wake {
            if futures::SinkExt::send(&mut changed, r).await.is_err() {
                return;
            }
        }
    }
}
