//! The provisioner of persistent-mode volumes. A link's claim sits on a
//! `WaitForFirstConsumer` StorageClass whose provisioner is `csi.ipclink.dev`; the
//! scheduler picks the node of the first member and writes it on the claim
//! (`volume.kubernetes.io/selected-node`); this creates the PersistentVolume with node
//! affinity to that node, and the PV controller binds it. Every later member then
//! follows the PV's node affinity. Released volumes it provisioned are deleted.
//!
//! There is nothing to allocate (the node plugin makes the link's tmpfs at publish), so
//! this is done here rather than by external-provisioner calling CreateVolume: one
//! component fewer on every cluster, and the operator already knows the link.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipclink_core::model::names::{DRIVER_NAME, LINK_LABEL, TOPOLOGY_KEY, topology_value};
use ipclink_runtime::Shutdown;
use k8s_openapi::api::core::v1::{
    CSIPersistentVolumeSource, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    ObjectReference, PersistentVolume, PersistentVolumeClaim, PersistentVolumeSpec,
    VolumeNodeAffinity,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::reconcile::{Reconnect, SELECTED_NODE};

const PROVISIONER: &str = "volume.kubernetes.io/storage-provisioner";
/// Annotation naming the provisioner of a PersistentVolume.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

/// The PV name for a claim, as external-provisioner names them.
pub fn volume_name(claim_uid: &str) -> String {
    format!("pvc-{claim_uid}")
}

/// The CSI volume id of a claim's volume: `<namespace>.<link>.<16 hex of the claim uid>`
/// (within CSI's 128 bytes).
pub fn volume_handle(namespace: &str, link: &str, claim_uid: &str) -> String {
    let short: String = claim_uid.chars().filter(|c| *c != '-').take(16).collect();
    format!("{namespace}.{link}.{short}")
}

/// The PV that satisfies `claim` on `node`; `None` when the claim is not ours to serve.
pub fn volume_for(claim: &PersistentVolumeClaim) -> Option<PersistentVolume> {
    let annotations = claim.annotations();
    if annotations.get(PROVISIONER).map(String::as_str) != Some(DRIVER_NAME) {
        return None;
    }
    let spec = claim.spec.as_ref()?;
    if spec.volume_name.as_deref().is_some_and(|v| !v.is_empty()) {
        return None;
    }
    let node = annotations.get(SELECTED_NODE)?;
    let link = claim.labels().get(LINK_LABEL)?;
    // Both end up in the volume (its handle, attributes and node affinity).
    if ipclink_core::model::names::check_dns_label(link).is_err()
        || ipclink_core::model::names::check_dns_subdomain(node).is_err()
    {
        return None;
    }
    let ns = claim.namespace()?;
    let uid = claim.uid()?;
    let size = spec.resources.as_ref()?.requests.as_ref()?.get("storage")?;
    Some(PersistentVolume {
        metadata: ObjectMeta {
            name: Some(volume_name(&uid)),
            labels: Some([(LINK_LABEL.to_owned(), link.clone())].into()),
            annotations: Some([(PROVISIONED_BY.to_owned(), DRIVER_NAME.to_owned())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some([("storage".to_owned(), size.clone())].into()),
            access_modes: spec.access_modes.clone(),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: Some(ns.clone()),
                name: Some(claim.name_any()),
                uid: Some(uid.clone()),
                ..ObjectReference::default()
            }),
            persistent_volume_reclaim_policy: Some("Delete".into()),
            storage_class_name: spec.storage_class_name.clone(),
            volume_mode: Some("Filesystem".into()),
            csi: Some(CSIPersistentVolumeSource {
                driver: DRIVER_NAME.into(),
                volume_handle: volume_handle(&ns, link, &uid),
                volume_attributes: Some(
                    [
                        ("link".to_owned(), link.clone()),
                        ("namespace".to_owned(), ns.clone()),
                    ]
                    .into(),
                ),
                ..CSIPersistentVolumeSource::default()
            }),
            node_affinity: Some(VolumeNodeAffinity {
                required: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: TOPOLOGY_KEY.into(),
                            operator: "In".into(),
                            values: Some(vec![topology_value(node)]),
                        }]),
                        ..NodeSelectorTerm::default()
                    }],
                }),
            }),
            ..PersistentVolumeSpec::default()
        }),
        ..PersistentVolume::default()
    })
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failed(String);

async fn provision(
    claim: Arc<PersistentVolumeClaim>,
    client: Arc<Client>,
) -> Result<Action, Failed> {
    let Some(pv) = volume_for(&claim) else {
        return Ok(Action::await_change());
    };
    // Only for the claim a link of the claim's own namespace made: anyone who may create
    // claims could label one with a link's name.
    let ns = claim.namespace().unwrap_or_default();
    let link = claim.labels().get(LINK_LABEL).cloned().unwrap_or_default();
    let links: Api<ipclink_core::IpcLink> = Api::namespaced((*client).clone(), &ns);
    let owner = links
        .get_opt(&link)
        .await
        .map_err(|e| Failed(format!("read IpcLink {ns}/{link}: {e}")))?;
    let owned = owner.as_ref().and_then(|l| l.uid()).is_some_and(|uid| {
        claim.owner_references().iter().any(|o| {
            o.uid == uid && o.kind == ipclink_core::model::spec::KIND && o.controller == Some(true)
        })
    });
    if !owned {
        tracing::warn!(namespace = %ns, claim = %claim.name_any(), link = %link, "not provisioned: the claim does not belong to an IpcLink of that name in its namespace");
        return Ok(Action::await_change());
    }
    let api: Api<PersistentVolume> = Api::all((*client).clone());
    match api.create(&PostParams::default(), &pv).await {
        Ok(_) => {
            tracing::info!(namespace = %claim.namespace().unwrap_or_default(), claim = %claim.name_any(), volume = %pv.name_any(), "provisioned");
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Action::await_change()),
        Err(e) => Err(Failed(format!("create volume {}: {e}", pv.name_any()))),
    }
}

async fn reclaim(pv: Arc<PersistentVolume>, client: Arc<Client>) -> Result<Action, Failed> {
    let ours = pv.annotations().get(PROVISIONED_BY).map(String::as_str) == Some(DRIVER_NAME);
    let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
    let delete = pv
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        == Some("Delete");
    if !(ours && released && delete) || pv.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let api: Api<PersistentVolume> = Api::all((*client).clone());
    match api.delete(&pv.name_any(), &DeleteParams::default()).await {
        Ok(_) => Ok(Action::await_change()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Action::await_change()),
        Err(e) => Err(Failed(format!(
            "delete released volume {}: {e}",
            pv.name_any()
        ))),
    }
}

fn retry<K>(_: Arc<K>, e: &Failed, _: Arc<Client>) -> Action {
    tracing::warn!(error = %e, "provisioner; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// Runs the provisioner and the reclaimer until shutdown.
pub async fn run(client: Client, shutdown: Shutdown) {
    let by_link = watcher::Config::default().labels(LINK_LABEL);
    let ctx = Arc::new(client.clone());
    let claims = Controller::new(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        by_link.clone(),
    )
    .trigger_backoff(Reconnect::default())
    .graceful_shutdown_on(shutdown.signalled())
    .run(provision, retry, ctx.clone())
    .for_each(|_| async {});
    let volumes = Controller::new(Api::<PersistentVolume>::all(client), by_link)
        .trigger_backoff(Reconnect::default())
        .graceful_shutdown_on(shutdown.signalled())
        .run(reclaim, retry, ctx)
        .for_each(|_| async {});
    futures::join!(claims, volumes);
}
