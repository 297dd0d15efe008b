//! The apply and status stages: a kube-rs controller over IpcLinks that also watches the
//! pods their members select and the claims it owns.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ipclink_core::IpcLink;
use ipclink_core::metrics::OperatorMetrics;
use ipclink_core::names::LINK_LABEL;
use ipclink_core::quantity::format_bytes;
use ipclink_core::spec::IpcLinkStatus;
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};

pub use crate::depth::Depths;
use crate::plan::{self, Observed};
use crate::pods::PodView;

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
    /// Every pod, from one watch.
    pub pods: Store<Pod>,
    /// Set once `pods` holds the watch's first list.
    pub pods_listed: Arc<std::sync::atomic::AtomicBool>,
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

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// The member pods of `link` in the pod cache.
fn member_pods(link: &IpcLink, pods: &Store<Pod>) -> Vec<PodView> {
    let ns = link.namespace().unwrap_or_default();
    let mut views: Vec<PodView> = pods
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| p.metadata.deletion_timestamp.is_none() || is_running(p))
        .filter_map(|p| PodView::of(p, link))
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    views
}

fn is_running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// One reconcile: validate → plan → apply → status.
pub async fn reconcile(link: Arc<IpcLink>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Before the first list of pods, every link would look memberless and a new leader
    // would write Pending over a Ready status: look again once the list is in.
    if !ctx.pods_listed.load(std::sync::atomic::Ordering::Acquire) {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let start = Instant::now();
    let result = reconcile_inner(&link, &ctx).await;
    let label = match &result {
        Ok((_, phase)) if *phase == ipclink_core::spec::Phase::Invalid => "invalid",
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
) -> Result<(Action, ipclink_core::spec::Phase), Error> {
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
                ipclink_core::spec::Phase::Terminating,
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
                ipclink_core::spec::Phase::Terminating,
            ));
        }
        cleanup(link, ctx).await?;
        remove_finalizer(&api, link).await?;
        tracing::info!(namespace = %ns, link = %name, "link deleted; cleanup done");
        return Ok((
            Action::await_change(),
            ipclink_core::spec::Phase::Terminating,
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
            ClaimState::Ours { node, created } => {
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
        observed.claim_node = claim_holder(&ctx.client, &ns, &name).await?;
    }
    let planned = plan::plan(link, &validated, &pods, &observed, &now);
    let phase = planned.phase();
    if !same_but_time(link.status.as_ref(), &planned.status) {
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
            note: Some(note.message),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(namespace = %ns, link = %name, error = %e, "cannot publish an Event");
        }
    }
    Ok((Action::requeue(ctx.resync), phase))
}

/// Whether `new` is what `old` already says, transition times aside (a status read
/// back from the API server has second precision).
fn same_but_time(old: Option<&IpcLinkStatus>, new: &IpcLinkStatus) -> bool {
    let Some(old) = old else { return false };
    let strip = |s: &IpcLinkStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(old) == strip(new)
}

/// The node holding link `namespace/name`'s claim, if a node plugin made one.
async fn claim_holder(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<String>, Error> {
    let api: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), namespace);
    match api
        .get_opt(&ipclink_core::names::link_claim_name(name))
        .await
    {
        Ok(lease) => Ok(lease.and_then(|l| l.spec?.holder_identity)),
        // RBAC from before claims: judge by the members' nodes alone.
        Err(kube::Error::Api(s)) if s.code == 403 => {
            tracing::warn!(
                namespace,
                link = name,
                "cannot read link claims (the operator's RBAC needs get on leases.coordination.k8s.io)"
            );
            Ok(None)
        }
        Err(e) => Err(kube_err(format!("read the claim of {name}"))(e)),
    }
}

async fn write_status(
    api: &Api<IpcLink>,
    link: &IpcLink,
    status: IpcLinkStatus,
    metrics: &OperatorMetrics,
) -> Result<(), Error> {
    metrics.status_writes.inc();
    let body = serde_json::json!({
        "apiVersion": ipclink_core::spec::API_VERSION,
        "kind": ipclink_core::spec::KIND,
        "status": status,
    });
    api.patch_status(
        &link.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
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

/// Cleanup: deletes what Apply created (the claim, if it is ours). Idempotent, and safe
/// when Apply never ran.
async fn cleanup(link: &IpcLink, ctx: &Context) -> Result<(), Error> {
    let ns = link.namespace().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    match claims.get_opt(&link.name_any()).await {
        Ok(Some(c)) if owned_by(&c.metadata, link) => {
            match claims
                .delete(&link.name_any(), &DeleteParams::background())
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if is_status(&e, 404) => Ok(()),
                Err(e) => Err(kube_err("delete the link's claim")(e)),
            }
        }
        Ok(_) => Ok(()),
        Err(e) => Err(kube_err("read the link's claim")(e)),
    }
}

fn owned_by(meta: &ObjectMeta, link: &IpcLink) -> bool {
    let uid = link.metadata.uid.as_deref();
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| Some(o.uid.as_str()) == uid && o.kind == ipclink_core::spec::KIND)
}

enum ClaimState {
    Ours { node: Option<String>, created: bool },
    Foreign(String),
}

/// Apply: the link's claim exists, is ours and asks for the link's size.
async fn ensure_claim(
    link: &IpcLink,
    claim: &ipclink_core::spec::ClaimSpec,
    size: u64,
    ctx: &Context,
) -> Result<ClaimState, Error> {
    let ns = link.namespace().unwrap_or_default();
    let name = link.name_any();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let judge = |c: &PersistentVolumeClaim, created: bool| {
        if owned_by(&c.metadata, link) {
            ClaimState::Ours {
                node: c.annotations().get(SELECTED_NODE).cloned(),
                created,
            }
        } else {
            ClaimState::Foreign(format!(
                "spec.claim: a PersistentVolumeClaim named {name} already exists in namespace {ns} and does not belong to this link; rename the link or that claim"
            ))
        }
    };
    if let Some(existing) = api
        .get_opt(&name)
        .await
        .map_err(kube_err("read the link's claim"))?
    {
        return Ok(judge(&existing, false));
    }
    let owner = link
        .controller_owner_ref(&())
        .into_iter()
        .collect::<Vec<_>>();
    let pvc = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(
                [
                    (LINK_LABEL.to_owned(), name.clone()),
                    (
                        "app.kubernetes.io/managed-by".to_owned(),
                        MANAGER.to_owned(),
                    ),
                ]
                .into(),
            ),
            owner_references: Some(owner),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteMany".into()]),
            storage_class_name: Some(
                claim
                    .storage_class_name
                    .clone()
                    .unwrap_or_else(|| DEFAULT_CLASS.into()),
            ),
            resources: Some(VolumeResourceRequirements {
                requests: Some([("storage".to_owned(), Quantity(format_bytes(size)))].into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &pvc).await {
        Ok(c) => {
            tracing::info!(namespace = %ns, link = %name, "created the link's claim");
            Ok(judge(&c, true))
        }
        Err(e) if is_status(&e, 409) => {
            let c = api
                .get(&name)
                .await
                .map_err(kube_err("read the link's claim"))?;
            Ok(judge(&c, false))
        }
        Err(e) => Err(kube_err("create the link's claim")(e)),
    }
}

/// Reconnect backoff for every watch: 250 ms doubling to at most 4 s, reset by the
/// first event. kube's default climbs to 30 s, which leaves a restarted API server's
/// changes unseen for half a minute.
#[derive(Debug, Clone)]
pub struct Reconnect {
    next: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            next: Duration::from_millis(250),
        }
    }
}

impl Iterator for Reconnect {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(4));
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for Reconnect {
    fn reset(&mut self) {
        *self = Reconnect::default();
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
}

/// Everything the controller shares with the rest of the process.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The link cache (for `ipclink_links{phase}`).
    pub links: Store<IpcLink>,
    /// Depths gathered from node plugins.
    pub depths: Depths,
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
    let pods: Api<Pod> = Api::all(client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());

    let (pod_store, pod_writer) = reflector::store();
    let pods_listed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (listed, store) = (pods_listed.clone(), pod_store.clone());
    tokio::spawn(async move {
        if store.wait_until_ready().await.is_ok() {
            listed.store(true, std::sync::atomic::Ordering::Release);
        }
    });
    let pod_stream = reflector(
        pod_writer,
        watcher(pods, watcher::Config::default()).backoff(Reconnect::default()),
    )
    .applied_objects();

    let controller = Controller::new(links, watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(settings.concurrency))
        .trigger_backoff(Reconnect::default());
    let link_store = controller.store();
    let _ = ready.send(Shared {
        links: link_store.clone(),
        depths: depths.clone(),
    });
    let mapper_store = link_store.clone();
    let ctx = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(settings.instance.clone()),
            },
        ),
        client,
        pods: pod_store,
        pods_listed,
        metrics,
        depths,
        fault: settings.fault,
        resync: settings.resync,
    });
    controller
        .owns(claims, watcher::Config::default().labels(LINK_LABEL))
        // A pod event wakes every link of its namespace that selects it now or listed
        // it before (labels can change).
        .watches_stream(pod_stream, move |pod: Pod| {
            let ns = pod.namespace().unwrap_or_default();
            let name = pod.name_any();
            let labels = pod.labels().clone();
            mapper_store
                .state()
                .into_iter()
                .filter(|l| l.namespace().as_deref() == Some(ns.as_str()))
                .filter(|l| {
                    !ipclink_core::members::members_of(l, &labels).is_empty()
                        || l.status
                            .as_ref()
                            .is_some_and(|s| s.members.iter().any(|m| m.pod == name))
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
}
