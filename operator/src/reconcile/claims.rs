//! The claims of links: a persistent link's PersistentVolumeClaim (made, judged,
//! released for re-homing when its node is lost, deleted with the link) and the Lease a
//! node plugin takes for an inline link.

use ipclink_core::model::names::{DRIVER_NAME, LINK_LABEL};
use ipclink_core::model::quantity::format_bytes;
use ipclink_core::{IpcLink, LinkKey};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};

use crate::reconcile::{Context, DEFAULT_CLASS, Error, MANAGER, SELECTED_NODE, is_status};

impl Context {
    /// Why `node` is lost, if it is: its Node was deleted, or it has not been Ready for
    /// longer than the re-homing grace. `None` while nodes are not listed yet, when
    /// re-homing is off, or when the node is fine.
    pub(crate) fn node_lost(&self, node: &str) -> Option<String> {
        let grace = self.rehome_after?;
        if !self.nodes_listed.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let Some(n) = self.nodes.get(&ObjectRef::new(node)) else {
            return Some("was deleted".into());
        };
        let ready = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))?;
        if ready.status == "True" {
            return None;
        }
        let since = ready.last_transition_time.as_ref()?;
        let now = k8s_openapi::jiff::Timestamp::now();
        let secs = now.duration_since(since.0).as_secs();
        (secs >= 0 && secs as u64 >= grace.as_secs()).then(|| {
            format!(
                "has not been Ready since {} (more than {} s)",
                since.0,
                grace.as_secs()
            )
        })
    }
}

/// The node holding link `namespace/name`'s claim, if a node plugin made one.
pub(crate) async fn lease_holder(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<String>, Error> {
    let api: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), namespace);
    match api
        .get_opt(&ipclink_core::model::names::link_lease_name(name))
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
        Err(source) => Err(Error::ReadLease {
            link: LinkKey::new(namespace, name),
            source,
        }),
    }
}

/// Cleanup: deletes what Apply created (the claim, if it is ours). Idempotent, and safe
/// when Apply never ran.
pub(crate) async fn cleanup(link: &IpcLink, ctx: &Context) -> Result<(), Error> {
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
                Err(source) => Err(Error::DeleteClaim {
                    link: LinkKey::new(&ns, link.name_any()),
                    source,
                }),
            }
        }
        Ok(_) => Ok(()),
        Err(source) => Err(Error::ReadClaim {
            link: LinkKey::new(&ns, link.name_any()),
            source,
        }),
    }
}

/// Re-homing: deletes the claim of a persistent link whose node is lost, so its next
/// member's scheduling picks a node, and says so in an Event. The claim is deleted with
/// its uid as precondition; the released volume goes with it (the provisioner deletes
/// it), and the next reconcile makes a new claim.
pub(crate) async fn rehome(
    link: &IpcLink,
    node: &str,
    why: &str,
    ctx: &Context,
) -> Result<(), Error> {
    let ns = link.namespace().unwrap_or_default();
    let name = link.name_any();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(claim) = api
        .get_opt(&name)
        .await
        .map_err(|source| Error::ReadClaim {
            link: LinkKey::new(&ns, &name),
            source,
        })?
    else {
        return Ok(());
    };
    let params = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: claim.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(&name, &params).await {
        Ok(_) => {}
        Err(e) if is_status(&e, 404) || is_status(&e, 409) => return Ok(()),
        Err(source) => {
            return Err(Error::DeleteClaim {
                link: LinkKey::new(&ns, &name),
                source,
            });
        }
    }
    tracing::warn!(namespace = %ns, link = %name, node, why, "released the link's volume: its node is lost");
    let event = Event {
        type_: EventType::Warning,
        reason: "Rehomed".into(),
        note: Some(crate::plan::conditions::bounded(format!(
            "node {node} {why} and no member has the link mounted: released its volume (claim {name}) so the next member's node is chosen again; the link's data did not move: its channels start empty on the new node"
        ))),
        action: "Rehome".into(),
        // The lost Node: it also keeps the Events of two re-homings apart (the
        // recorder folds Events of the same reason and objects into one series).
        secondary: Some(k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_owned()),
            ..Default::default()
        }),
    };
    if let Err(e) = ctx.recorder.publish(&event, &link.object_ref(&())).await {
        tracing::warn!(namespace = %ns, link = %name, error = %e, "cannot publish an Event");
    }
    Ok(())
}

pub(crate) fn owned_by(meta: &ObjectMeta, link: &IpcLink) -> bool {
    let uid = link.metadata.uid.as_deref();
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| Some(o.uid.as_str()) == uid && o.kind == ipclink_core::model::spec::KIND)
}

pub(crate) enum ClaimState {
    Ours {
        node: Option<String>,
        created: bool,
        /// Being deleted (a re-homing in progress).
        deleting: bool,
    },
    Foreign(String),
}

/// Why a link's claim may not name StorageClass `class`: only classes of our driver
/// are allowed, so a link cannot make a claim its namespace then gets some other
/// storage for. `None` when it may (or when this replica's RBAC, from before the check,
/// cannot read StorageClasses: then a warning is logged).
async fn foreign_class(client: &Client, class: &str) -> Result<Option<String>, Error> {
    use k8s_openapi::api::storage::v1::StorageClass;
    match Api::<StorageClass>::all(client.clone())
        .get_opt(class)
        .await
    {
        Ok(Some(sc)) if sc.provisioner == DRIVER_NAME => Ok(None),
        Ok(Some(sc)) => Ok(Some(format!(
            "spec.claim.storageClassName: StorageClass {class} is provisioned by {}; a link's claim may only name a StorageClass of {DRIVER_NAME}",
            sc.provisioner
        ))),
        Ok(None) => Ok(Some(format!(
            "spec.claim.storageClassName: StorageClass {class} does not exist; name a StorageClass of {DRIVER_NAME} (the chart makes {DEFAULT_CLASS})"
        ))),
        Err(e) if is_status(&e, 403) => {
            tracing::warn!(
                class,
                "cannot read StorageClasses (RBAC): the claim's class is not checked"
            );
            Ok(None)
        }
        Err(source) => Err(Error::ReadStorageClass {
            class: class.to_owned(),
            source,
        }),
    }
}

/// Apply: the link's claim exists, is ours and asks for the link's size.
pub(crate) async fn ensure_claim(
    link: &IpcLink,
    claim: &ipclink_core::model::spec::ClaimSpec,
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
                deleting: c.metadata.deletion_timestamp.is_some(),
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
        .map_err(|source| Error::ReadClaim {
            link: LinkKey::new(&ns, &name),
            source,
        })?
    {
        return Ok(judge(&existing, false));
    }
    let class = claim
        .storage_class_name
        .clone()
        .unwrap_or_else(|| DEFAULT_CLASS.into());
    if let Some(why) = foreign_class(&ctx.client, &class).await? {
        return Ok(ClaimState::Foreign(why));
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
            storage_class_name: Some(class),
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
            let c = api.get(&name).await.map_err(|source| Error::ReadClaim {
                link: LinkKey::new(&ns, &name),
                source,
            })?;
            Ok(judge(&c, false))
        }
        Err(source) => Err(Error::CreateClaim {
            link: LinkKey::new(&ns, &name),
            source,
        }),
    }
}
