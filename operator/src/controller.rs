//! The apply and status stages: a kube-rs controller over IpcLinks that also watches the
//! pods their members select and the claims it owns.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ipclink_core::IpcLink;
use ipclink_core::metrics::OperatorMetrics;
use ipclink_core::model::names::LINK_LABEL;
use ipclink_core::model::spec::IpcLinkStatus;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};

use crate::claims::{ClaimState, claim_holder, cleanup, ensure_claim, rehome};
pub use crate::depth::Depths;
use crate::linkindex::LinkIndex;
use crate::plan::{self, Observed};
use crate::podcache::{PodCache, PodIndex, PodWatch};
use crate::pods::{PodView, WirePod};
use crate::status::{OWN_WRITE_SETTLE, Written, fingerprint, only_depths_differ, same_but_time};
pub use crate::watch::Reconnect;
use crate::watch::{mark_listed, reflected};

/// The finalizer that makes deletion wait for members to unmount.
pub const FINALIZER: &str = "ipclink.dev/cleanup";
/// Field manager of every write.
pub const MANAGER: &str = "ipclink-operator";
/// Default StorageClass of persistent-mode claims.
pub const DEFAULT_CLASS: &str = "ipclink";
/// Annotation the scheduler sets on a WaitForFirstConsumer claim.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// Shared by every reconcile.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Every pod, from one watch, by namespace and label.
    pub pods: Arc<PodIndex>,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Reconcile counters.
    pub metrics: OperatorMetrics,
    /// Depths to fold into status.
    pub depths: Depths,
    /// Test hook: `exit-after-claim` aborts the process right after creating a claim,
    /// before any status is written (proves a restart converges without duplicates).
    pub fault: Option<String>,
    /// How often a Ready link is looked at again without a change.
    pub resync: Duration,
    /// Least time between two status writes of a link whose depths alone changed.
    pub status_min_interval: Duration,
    /// The claims node plugins take of inline links (Leases labelled with the link).
    pub claims: Store<Lease>,
    /// Set once `claims` holds the watch's first list.
    pub claims_listed: Arc<std::sync::atomic::AtomicBool>,
    /// Every Node, from one watch (name and conditions only).
    pub nodes: Store<Node>,
    /// Set once `nodes` holds the watch's first list.
    pub nodes_listed: Arc<std::sync::atomic::AtomicBool>,
    /// How long a persistent link's node may be NotReady before the link is re-homed;
    /// `None`: never re-home.
    pub rehome_after: Option<Duration>,
    /// When each link's status was last written by this replica.
    pub last_writes: std::sync::Mutex<std::collections::HashMap<(String, String), Written>>,
}

impl Context {
    /// How long a depth-only status write of `key` must still wait, if at all.
    fn write_wait(&self, key: &(String, String)) -> Option<Duration> {
        let writes = self.last_writes.lock().unwrap_or_else(|p| p.into_inner());
        let since = writes.get(key)?.at.elapsed();
        (since < self.status_min_interval).then(|| self.status_min_interval - since)
    }

    /// How long to wait for the cache to show `status`, if this replica wrote exactly
    /// that a moment ago (a reconcile woken by an earlier event sees the link from
    /// before that write).
    fn own_write_pending(
        &self,
        key: &(String, String),
        status: &IpcLinkStatus,
    ) -> Option<Duration> {
        let writes = self.last_writes.lock().unwrap_or_else(|p| p.into_inner());
        let w = writes.get(key)?;
        let since = w.at.elapsed();
        (since < OWN_WRITE_SETTLE && w.fingerprint == fingerprint(status))
            .then(|| OWN_WRITE_SETTLE - since)
    }

    fn wrote(&self, key: (String, String), status: &IpcLinkStatus) {
        let written = Written {
            at: Instant::now(),
            fingerprint: fingerprint(status),
        };
        let mut writes = self.last_writes.lock().unwrap_or_else(|p| p.into_inner());
        writes.insert(key, written);
    }

    fn forget(&self, key: &(String, String)) {
        let mut writes = self.last_writes.lock().unwrap_or_else(|p| p.into_inner());
        writes.remove(key);
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// Why one reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was attempted.
        what: String,
        /// The client's error.
        source: kube::Error,
    },
}

impl Error {
    /// A constant category of the error: the `error` label of
    /// `ipclink_reconcile_errors_total` (never a formatted payload, so the family's
    /// cardinality stays fixed).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { source, .. } => match source {
                kube::Error::Api(s) => match s.code {
                    403 => "forbidden",
                    404 => "not_found",
                    409 => "conflict",
                    422 => "invalid",
                    429 => "throttled",
                    c if c >= 500 => "apiserver",
                    _ => "api",
                },
                kube::Error::HyperError(_) | kube::Error::Service(_) => "connection",
                kube::Error::SerdeError(_) => "serialization",
                _ => "client",
            },
        }
    }
}

pub(crate) fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

pub(crate) fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// The member pods of `link` in the pod cache, by name.
fn member_pods(link: &IpcLink, pods: &PodIndex) -> Vec<PodView> {
    let ns = link.namespace().unwrap_or_default();
    let selectors: Vec<_> = link
        .spec
        .members
        .iter()
        .filter_map(|m| m.pod_selector.as_ref())
        .collect();
    if selectors.is_empty() {
        return Vec::new();
    }
    pods.select(&ns, &selectors)
        .iter()
        .filter(|p| p.live())
        .filter_map(|p| p.view(link))
        .collect()
}

/// One reconcile: validate → plan → apply → status.
pub async fn reconcile(link: Arc<IpcLink>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Before the first list of pods, every link would look memberless and a new leader
    // would write Pending over a Ready status: look again once the list is in.
    if !ctx.pods.listed() {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let start = Instant::now();
    let result = reconcile_inner(&link, &ctx).await;
    let label = match &result {
        Ok((_, phase)) if *phase == ipclink_core::model::spec::Phase::Invalid => "invalid",
        Ok(_) => "ok",
        Err(e) => {
            ctx.metrics
                .errors
                .with_label_values(&[e.metric_label()])
                .inc();
            "error"
        }
    };
    ctx.metrics.reconciles.with_label_values(&[label]).inc();
    ctx.metrics.duration.observe(start.elapsed().as_secs_f64());
    result.map(|(action, _)| action)
}

async fn reconcile_inner(
    link: &IpcLink,
    ctx: &Context,
) -> Result<(Action, ipclink_core::model::spec::Phase), Error> {
    let ns = link.namespace().unwrap_or_default();
    let name = link.name_any();
    let api: Api<IpcLink> = Api::namespaced(ctx.client.clone(), &ns);
    let pods = member_pods(link, &ctx.pods);
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    // Validate (pure), once: Apply and plan both need it.
    let validated = ipclink_core::validate(link);

    if link.metadata.deletion_timestamp.is_some() {
        if !link.finalizers().iter().any(|f| f == FINALIZER) {
            return Ok((
                Action::await_change(),
                ipclink_core::model::spec::Phase::Terminating,
            ));
        }
        if pods.iter().any(|p| p.mounted) {
            // Written only when it changes: the write itself wakes this link again.
            let planned = plan::plan(link, &validated, &pods, &Observed::default(), &now);
            if !same_but_time(link.status.as_ref(), &planned.status) {
                write_status(&api, link, planned.status, &ctx.metrics).await?;
            }
            return Ok((
                Action::requeue(Duration::from_secs(5)),
                ipclink_core::model::spec::Phase::Terminating,
            ));
        }
        cleanup(link, ctx).await?;
        remove_finalizer(&api, link).await?;
        ctx.forget(&(ns.clone(), name.clone()));
        tracing::info!(namespace = %ns, link = %name, "link deleted; cleanup done");
        return Ok((
            Action::await_change(),
            ipclink_core::model::spec::Phase::Terminating,
        ));
    }

    add_finalizer(&api, link).await?;

    let mut observed = Observed {
        channels: ctx
            .depths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(ns.clone(), name.clone()))
            .cloned(),
        ..Observed::default()
    };
    // Apply: the claim of a persistent-mode link, only once the spec is valid.
    if let (Some(claim), Ok(valid)) = (&link.spec.claim, &validated) {
        match ensure_claim(link, claim, valid.size_limit, ctx).await? {
            ClaimState::Ours {
                node,
                created,
                deleting,
            } => {
                if deleting {
                    // Released for re-homing: made again once it is gone.
                    return Ok((
                        Action::requeue(Duration::from_secs(1)),
                        link.status
                            .as_ref()
                            .and_then(|s| s.phase)
                            .unwrap_or(ipclink_core::model::spec::Phase::Pending),
                    ));
                }
                if let Some(n) = &node
                    && !pods.iter().any(|p| p.mounted)
                    && let Some(why) = ctx.node_lost(n)
                {
                    rehome(link, n, &why, ctx).await?;
                    return Ok((
                        Action::requeue(Duration::from_secs(1)),
                        ipclink_core::model::spec::Phase::Pending,
                    ));
                }
                observed.claim_node = node;
                if created && ctx.fault.as_deref() == Some("exit-after-claim") {
                    tracing::error!("fault injection: exiting after creating the claim");
                    // As a kill -9 would: no destructors, no core file.
                    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
                }
            }
            ClaimState::Foreign(why) => observed.claim_conflict = Some(why),
        }
    }
    // An inline link lives where a node plugin claimed it (its first publish).
    if link.spec.claim.is_none() {
        observed.claim_node = if ctx.claims_listed.load(std::sync::atomic::Ordering::Acquire) {
            ctx.claims
                .get(
                    &ObjectRef::new(&ipclink_core::model::names::link_claim_name(&name))
                        .within(&ns),
                )
                .and_then(|l| l.spec.as_ref()?.holder_identity.clone())
        } else {
            // Not watched (RBAC from before the watch): read it.
            claim_holder(&ctx.client, &ns, &name).await?
        };
    }
    let planned = plan::plan(link, &validated, &pods, &observed, &now);
    let phase = planned.phase();
    if !same_but_time(link.status.as_ref(), &planned.status) {
        let key = (ns.clone(), name.clone());
        // Depths alone change often: written at most once per interval per link.
        if only_depths_differ(link.status.as_ref(), &planned.status)
            && let Some(wait) = ctx.write_wait(&key)
        {
            return Ok((Action::requeue(wait), phase));
        }
        if let Some(wait) = ctx.own_write_pending(&key, &planned.status) {
            return Ok((Action::requeue(wait), phase));
        }
        ctx.wrote(key, &planned.status);
        write_status(&api, link, planned.status, &ctx.metrics).await?;
    }
    let reference = link.object_ref(&());
    for note in planned.notes {
        let event = Event {
            type_: if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.as_str().into(),
            note: Some(crate::conditions::bounded(note.message)),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(namespace = %ns, link = %name, error = %e, "cannot publish an Event");
        }
    }
    Ok((Action::requeue(ctx.resync), phase))
}

async fn write_status(
    api: &Api<IpcLink>,
    link: &IpcLink,
    status: IpcLinkStatus,
    metrics: &OperatorMetrics,
) -> Result<(), Error> {
    metrics.status_writes.inc();
    let value = serde_json::to_value(&status)
        .map_err(|e| kube_err("encode the status")(kube::Error::SerdeError(e)))?;
    let patch: json_patch::Patch = serde_json::from_value(
        serde_json::json!([{"op": "add", "path": "/status", "value": value}]),
    )
    .map_err(|e| kube_err("build the status patch")(kube::Error::SerdeError(e)))?;
    api.patch_status(
        &link.name_any(),
        &PatchParams {
            field_manager: Some(MANAGER.into()),
            ..PatchParams::default()
        },
        &Patch::Json::<()>(patch),
    )
    .await
    .map(|_| ())
    .map_err(kube_err(format!("write the status of {}", link.name_any())))
}

// The finalizer is added and removed here rather than through kube-runtime's
// `finalizer()` helper: deletion first has to wait, requeueing and writing a planned
// `Terminating` status, until no member has the link mounted, and validate and plan run
// once for both branches; the helper's Apply/Cleanup split would make that wait a second
// code path. The patches carry a `test` op, so a concurrent change of the list fails
// instead of being overwritten.
async fn add_finalizer(api: &Api<IpcLink>, link: &IpcLink) -> Result<(), Error> {
    if link.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let patch = if link.metadata.finalizers.is_none() {
        serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    } else {
        serde_json::json!([{"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}])
    };
    let patch: json_patch::Patch = serde_json::from_value(patch)
        .map_err(|e| kube_err("build the finalizer patch")(kube::Error::SerdeError(e)))?;
    api.patch(
        &link.name_any(),
        &PatchParams::default(),
        &Patch::Json::<()>(patch),
    )
    .await
    .map(|_| ())
    .map_err(kube_err(format!(
        "add the finalizer to {}",
        link.name_any()
    )))
}

async fn remove_finalizer(api: &Api<IpcLink>, link: &IpcLink) -> Result<(), Error> {
    let Some(i) = link.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let patch = serde_json::json!([
        {"op": "test", "path": format!("/metadata/finalizers/{i}"), "value": FINALIZER},
        {"op": "remove", "path": format!("/metadata/finalizers/{i}")},
    ]);
    let patch: json_patch::Patch = serde_json::from_value(patch)
        .map_err(|e| kube_err("build the finalizer patch")(kube::Error::SerdeError(e)))?;
    match api
        .patch(
            &link.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(kube_err(format!(
            "remove the finalizer of {}",
            link.name_any()
        ))(e)),
    }
}

fn error_policy(link: Arc<IpcLink>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(namespace = %link.namespace().unwrap_or_default(), link = %link.name_any(), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Settings of [`run`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// How many links are reconciled at once.
    pub concurrency: u16,
    /// Resync of a link without changes.
    pub resync: Duration,
    /// Test hook, see [`Context::fault`].
    pub fault: Option<String>,
    /// Name this operator reports in Events.
    pub instance: String,
    /// How pods are cached and found.
    pub pod_cache: PodCache,
    /// See [`Context::status_min_interval`].
    pub status_min_interval: Duration,
    /// See [`Context::rehome_after`].
    pub rehome_after: Option<Duration>,
}

/// Everything the controller shares with the rest of the process.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The link cache (for `ipclink_links{phase}`).
    pub links: Store<IpcLink>,
    /// Depths gathered from node plugins.
    pub depths: Depths,
    /// Whether the caches a reconcile reads hold their first list.
    pub synced: Synced,
}

/// Whether the caches a reconcile reads hold their first list: a leader that has not
/// read them yet is not ready (`/readyz`).
#[derive(Debug, Clone)]
pub struct Synced {
    links: Arc<std::sync::atomic::AtomicBool>,
    pods: Arc<PodIndex>,
    nodes: Arc<std::sync::atomic::AtomicBool>,
    claims: Arc<std::sync::atomic::AtomicBool>,
}

impl Synced {
    /// The caches still waiting for their first list, by resource.
    pub fn missing(&self) -> Vec<&'static str> {
        let listed =
            |f: &std::sync::atomic::AtomicBool| f.load(std::sync::atomic::Ordering::Acquire);
        [
            ("ipclinks", listed(&self.links)),
            ("pods", self.pods.listed()),
            ("nodes", listed(&self.nodes)),
            ("leases", listed(&self.claims)),
        ]
        .into_iter()
        .filter(|(_, done)| !done)
        .map(|(what, _)| what)
        .collect()
    }
}

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
pub async fn run(
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

    let pod_index = Arc::new(PodIndex::new(settings.pod_cache));

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

    // Inline links' claims: which node holds each.
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
    let controller = match settings.pod_cache {
        PodCache::Slim => pods.wakes(controller, Api::<WirePod>::all(client.clone())),
        PodCache::Full => pods.wakes(controller, Api::<Pod>::all(client.clone())),
    };
    let _ = ready.send(Shared {
        links: link_store.clone(),
        depths: depths.clone(),
        synced: Synced {
            links: links_listed,
            pods: pod_index.clone(),
            nodes: nodes_listed.clone(),
            claims: leases_listed.clone(),
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
        fault: settings.fault,
        resync: settings.resync,
        status_min_interval: settings.status_min_interval,
        last_writes: std::sync::Mutex::default(),
        nodes: node_store,
        nodes_listed,
        claims: lease_store,
        claims_listed: leases_listed,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> Error {
        Error::Kube {
            what: format!("a call answered {code}"),
            source: kube::Error::Api(
                kube::core::Status::failure("x", "y")
                    .with_code(code)
                    .boxed(),
            ),
        }
    }

    #[test]
    fn errors_have_constant_metric_labels() {
        for (code, label) in [
            (403, "forbidden"),
            (404, "not_found"),
            (409, "conflict"),
            (422, "invalid"),
            (429, "throttled"),
            (500, "apiserver"),
            (503, "apiserver"),
            (400, "api"),
        ] {
            assert_eq!(api(code).metric_label(), label, "{code}");
        }
        let parse = serde_json::from_str::<u8>("x").expect_err("not a number");
        let e = Error::Kube {
            what: "decode".into(),
            source: kube::Error::SerdeError(parse),
        };
        assert_eq!(e.metric_label(), "serialization");
    }

    #[test]
    fn a_leader_is_ready_once_every_cache_has_listed() {
        use ipclink_runtime::links::Exposition;
        use std::sync::atomic::{AtomicBool, Ordering};
        let flag = || Arc::new(AtomicBool::new(false));
        let synced = Synced {
            links: flag(),
            pods: Arc::new(PodIndex::new(PodCache::Slim)),
            nodes: flag(),
            claims: flag(),
        };
        let registry = prometheus::Registry::new();
        let exposed = crate::metrics::Exposed {
            metrics: OperatorMetrics::new(&registry).expect("metrics"),
            registry,
            links: std::sync::OnceLock::new(),
            synced: std::sync::OnceLock::new(),
        };
        assert_eq!(exposed.ready(), Ok(()), "a standby is ready");
        exposed.synced.set(synced.clone()).expect("set once");
        assert_eq!(
            exposed.ready(),
            Err(
                "leading, but the first list of ipclinks, pods, nodes, leases is not in yet".into()
            )
        );
        synced.links.store(true, Ordering::Release);
        synced.nodes.store(true, Ordering::Release);
        synced.claims.store(true, Ordering::Release);
        assert_eq!(synced.missing(), ["pods"]);
        synced
            .pods
            .apply(&kube::runtime::watcher::Event::<Pod>::InitDone);
        assert_eq!(synced.missing(), Vec::<&str>::new());
        assert_eq!(exposed.ready(), Ok(()));
    }
}
