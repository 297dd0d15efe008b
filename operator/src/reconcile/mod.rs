//! The apply stage: one reconcile of a link (validate, plan, claims, status, Events,
//! the finalizer). The watches that feed it are wired in `crate::run`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ipclink_core::metrics::OperatorMetrics;
use ipclink_core::model::spec::IpcLinkStatus;
use ipclink_core::{IpcLink, LinkKey};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

mod claims;
mod context;
#[cfg(test)]
mod scripted;
pub(crate) mod status;

use crate::cache::podcache::PodIndex;
pub use crate::cache::watch::Reconnect;
pub use crate::gather::Depths;
use crate::plan::{self, Observed};
use crate::pods::PodView;
use claims::{ClaimState, cleanup, ensure_claim, lease_holder, rehome};
pub(crate) use context::is_status;
pub use context::{Context, Error, Settings, Shared};
use status::{Decision, same_but_time};

/// The finalizer that makes deletion wait for members to unmount.
pub const FINALIZER: &str = "ipclink.dev/cleanup";
/// Field manager of every write.
pub const MANAGER: &str = "ipclink-operator";
/// Default StorageClass of persistent-mode claims.
pub const DEFAULT_CLASS: &str = "ipclink";
/// Annotation the scheduler sets on a WaitForFirstConsumer claim.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

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
        ctx.status.forget(&LinkKey::new(&ns, &name));
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
            .get(&LinkKey::new(&ns, &name))
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
                observed.bound_node = node;
                if created && ipclink_core::fault::is(ipclink_core::fault::Fault::ExitAfterClaim) {
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
        observed.bound_node = if ctx.leases_listed.load(std::sync::atomic::Ordering::Acquire) {
            ctx.leases
                .get(
                    &ObjectRef::new(&ipclink_core::model::names::link_lease_name(&name))
                        .within(&ns),
                )
                .and_then(|l| l.spec.as_ref()?.holder_identity.clone())
        } else {
            // Not watched (RBAC from before the watch): read it.
            lease_holder(&ctx.client, &ns, &name).await?
        };
    }
    let planned = plan::plan(link, &validated, &pods, &observed, &now);
    let phase = planned.phase();
    let key = LinkKey::new(&ns, &name);
    let now_instant = Instant::now();
    match ctx
        .status
        .decide(&key, link.status.as_ref(), &planned.status, now_instant)
    {
        Decision::Unchanged => {}
        Decision::Wait(wait) => return Ok((Action::requeue(wait), phase)),
        Decision::Write => {
            ctx.status.wrote(key, &planned.status, now_instant);
            write_status(&api, link, planned.status, &ctx.metrics).await?;
        }
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
            note: Some(crate::plan::conditions::bounded(note.message)),
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
    let value = serde_json::to_value(&status).map_err(|source| Error::Encode {
        what: "encode the status",
        source,
    })?;
    let patch: json_patch::Patch = serde_json::from_value(
        serde_json::json!([{"op": "add", "path": "/status", "value": value}]),
    )
    .map_err(|source| Error::Encode {
        what: "build the status patch",
        source,
    })?;
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
    .map_err(|source| Error::WriteStatus {
        link: key_of(link),
        source,
    })
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
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(|source| Error::Encode {
            what: "build the finalizer patch",
            source,
        })?;
    api.patch(
        &link.name_any(),
        &PatchParams::default(),
        &Patch::Json::<()>(patch),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::AddFinalizer {
        link: key_of(link),
        source,
    })
}

async fn remove_finalizer(api: &Api<IpcLink>, link: &IpcLink) -> Result<(), Error> {
    let Some(i) = link.finalizers().iter().position(|f| f == FINALIZER) else {
        return Ok(());
    };
    let patch = serde_json::json!([
        {"op": "test", "path": format!("/metadata/finalizers/{i}"), "value": FINALIZER},
        {"op": "remove", "path": format!("/metadata/finalizers/{i}")},
    ]);
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(|source| Error::Encode {
            what: "build the finalizer patch",
            source,
        })?;
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
        Err(source) => Err(Error::RemoveFinalizer {
            link: key_of(link),
            source,
        }),
    }
}

/// The key of `link`, as its object names it.
fn key_of(link: &IpcLink) -> LinkKey {
    LinkKey::new(link.namespace().unwrap_or_default(), link.name_any())
}

pub(crate) fn error_policy(link: Arc<IpcLink>, error: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(namespace = %link.namespace().unwrap_or_default(), link = %link.name_any(), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}
