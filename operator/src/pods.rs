//! What the operator reads of a pod: which members of a link select it, where it runs,
//! whether it has the link mounted, and as whom its containers run.

use ipclink_core::IpcLink;
use ipclink_core::model::names::DRIVER_NAME;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::Deserialize;

/// What the operator needs of one pod selected by a link's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// Pod name.
    pub name: String,
    /// Members of the link that select it.
    pub members: Vec<String>,
    /// Node it is bound to.
    pub node: Option<String>,
    /// Whether it references the link in a volume (inline `csi` or the link's claim).
    pub uses_link: bool,
    /// Running with the link in a volume: the kubelet has mounted it.
    pub mounted: bool,
    /// The identities of the containers that mount the link (every container when the
    /// pod does not reference the link yet).
    pub identities: Vec<Identity>,
}

/// The user and groups a container's processes run with, as far as the pod says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Container name.
    pub container: String,
    /// `runAsUser` (container, else pod); `None` when the image decides.
    pub uid: Option<u32>,
    /// `runAsGroup`, `fsGroup` and `supplementalGroups`.
    pub groups: Vec<u32>,
}

/// What the operator keeps of a pod: a few strings and numbers instead of the whole
/// object (a `Pod` decoded by k8s-openapi takes kilobytes even when most of it is empty,
/// and a cluster has tens of thousands).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlimPod {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Labels.
    pub labels: LabelSet,
    /// It has a deletion timestamp.
    pub deleting: bool,
    /// Node it is bound to.
    pub node: Option<String>,
    /// Its phase is Running.
    pub running: bool,
    /// The volumes that may reference a link: our driver's inline volumes and claims.
    pub volumes: Vec<SlimVolume>,
    /// Its containers.
    pub containers: Vec<SlimContainer>,
    /// Pod-level `runAsUser`, `runAsGroup`, `fsGroup`.
    pub run_as_user: Option<i64>,
    /// See `run_as_user`.
    pub run_as_group: Option<i64>,
    /// See `run_as_user`.
    pub fs_group: Option<i64>,
    /// `supplementalGroups`.
    pub supplemental_groups: Vec<i64>,
}

/// A pod's labels, sorted by key. Three labels take about 100 bytes here and over 500
/// in a `BTreeMap` (one node holds room for eleven), which counts at tens of thousands
/// of pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSet(Box<[(Box<str>, Box<str>)]>);

impl LabelSet {
    /// Every label, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }
}

impl From<BTreeMap<String, String>> for LabelSet {
    /// Keeps the map's order (by key).
    fn from(map: BTreeMap<String, String>) -> LabelSet {
        LabelSet(
            map.into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
                .collect(),
        )
    }
}

impl ipclink_core::model::members::Labels for LabelSet {
    fn label(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }
}

/// A volume of a [`SlimPod`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlimVolume {
    /// Volume name.
    pub name: String,
    /// The `link` attribute of an inline volume of our driver.
    pub inline_link: Option<String>,
    /// The claim a `persistentVolumeClaim` volume names.
    pub claim: Option<String>,
}

/// A container of a [`SlimPod`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlimContainer {
    /// Container name.
    pub name: String,
    /// Container-level `runAsUser`.
    pub run_as_user: Option<i64>,
    /// Container-level `runAsGroup`.
    pub run_as_group: Option<i64>,
    /// Names of the volumes it mounts (of those the pod keeps).
    pub mounts: Vec<String>,
}

/// The volume of a pod the operator keeps, if it may reference a link: an inline
/// volume of our driver (`ours` is its `link` attribute) or a claim.
fn kept_volume(
    name: String,
    ours: Option<Option<String>>,
    claim: Option<String>,
) -> Option<SlimVolume> {
    let inline_link = ours.map(Option::unwrap_or_default);
    (inline_link.is_some() || claim.is_some()).then_some(SlimVolume {
        name,
        inline_link,
        claim,
    })
}

/// The mounts of a container that name a kept volume.
fn kept_mounts<'a>(mounts: impl Iterator<Item = &'a str>, volumes: &[SlimVolume]) -> Vec<String> {
    mounts
        .filter(|m| volumes.iter().any(|v| v.name == *m))
        .map(str::to_owned)
        .collect()
}

impl SlimPod {
    /// The fields of `pod` the operator reads.
    pub fn of(pod: &Pod) -> SlimPod {
        let spec = pod.spec.as_ref();
        let volumes: Vec<SlimVolume> = spec
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|v| {
                kept_volume(
                    v.name.clone(),
                    v.csi.as_ref().filter(|c| c.driver == DRIVER_NAME).map(|c| {
                        let link = c.volume_attributes.as_ref().and_then(|a| a.get("link"));
                        link.cloned()
                    }),
                    v.persistent_volume_claim
                        .as_ref()
                        .map(|c| c.claim_name.clone()),
                )
            })
            .collect();
        let containers = spec
            .map(|s| s.containers.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|c| {
                let sc = c.security_context.as_ref();
                SlimContainer {
                    name: c.name.clone(),
                    run_as_user: sc.and_then(|s| s.run_as_user),
                    run_as_group: sc.and_then(|s| s.run_as_group),
                    mounts: kept_mounts(
                        c.volume_mounts.iter().flatten().map(|m| m.name.as_str()),
                        &volumes,
                    ),
                }
            })
            .collect();
        let psc = spec.and_then(|s| s.security_context.as_ref());
        SlimPod {
            name: pod.metadata.name.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default().into(),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            node: spec.and_then(|s| s.node_name.clone()),
            running: pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"),
            volumes,
            containers,
            run_as_user: psc.and_then(|p| p.run_as_user),
            run_as_group: psc.and_then(|p| p.run_as_group),
            fs_group: psc.and_then(|p| p.fs_group),
            supplemental_groups: psc
                .and_then(|p| p.supplemental_groups.clone())
                .unwrap_or_default(),
        }
    }
}

/// A pod as the slim cache decodes it from a list or watch: serde fills these fields and
/// skips the rest of the object without building it, so no `Pod` of kilobytes is made
/// (and dropped) per event. [`SlimPod::from`] keeps what the operator reads.
#[derive(Debug, Clone, Deserialize)]
pub struct WirePod {
    /// Name, namespace, labels, deletion timestamp, resource version and uid only.
    #[serde(deserialize_with = "wire_meta")]
    pub metadata: ObjectMeta,
    spec: Option<WireSpec>,
    status: Option<WireStatus>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMeta {
    name: Option<String>,
    namespace: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    deletion_timestamp: Option<Time>,
    resource_version: Option<String>,
    uid: Option<String>,
}

fn wire_meta<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = WireMeta::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        labels: m.labels,
        deletion_timestamp: m.deletion_timestamp,
        resource_version: m.resource_version,
        uid: m.uid,
        ..ObjectMeta::default()
    })
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSpec {
    node_name: Option<String>,
    volumes: Option<Vec<WireVolume>>,
    containers: Option<Vec<WireContainer>>,
    security_context: Option<WireIds>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireVolume {
    name: String,
    csi: Option<WireCsi>,
    persistent_volume_claim: Option<WireClaim>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCsi {
    driver: String,
    volume_attributes: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireClaim {
    claim_name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireContainer {
    name: String,
    security_context: Option<WireIds>,
    volume_mounts: Option<Vec<WireMount>>,
}

/// A pod's or a container's `securityContext`, the identity fields only (a container
/// has no `fsGroup` or `supplementalGroups`: they stay empty).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireIds {
    run_as_user: Option<i64>,
    run_as_group: Option<i64>,
    fs_group: Option<i64>,
    supplemental_groups: Option<Vec<i64>>,
}

#[derive(Debug, Clone, Deserialize)]
struct WireMount {
    name: String,
}

#[derive(Debug, Clone, Deserialize)]
struct WireStatus {
    phase: Option<String>,
}

impl kube::Resource for WirePod {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl From<WirePod> for SlimPod {
    fn from(pod: WirePod) -> SlimPod {
        let (node, volumes, containers, psc) = match pod.spec {
            Some(s) => (
                s.node_name,
                s.volumes.unwrap_or_default(),
                s.containers.unwrap_or_default(),
                s.security_context,
            ),
            None => (None, Vec::new(), Vec::new(), None),
        };
        let volumes: Vec<SlimVolume> = volumes
            .into_iter()
            .filter_map(|v| {
                kept_volume(
                    v.name,
                    v.csi
                        .filter(|c| c.driver == DRIVER_NAME)
                        .map(|c| c.volume_attributes.and_then(|mut a| a.remove("link"))),
                    v.persistent_volume_claim.map(|c| c.claim_name),
                )
            })
            .collect();
        let containers = containers
            .into_iter()
            .map(|c| SlimContainer {
                mounts: kept_mounts(
                    c.volume_mounts.iter().flatten().map(|m| m.name.as_str()),
                    &volumes,
                ),
                name: c.name,
                run_as_user: c.security_context.as_ref().and_then(|s| s.run_as_user),
                run_as_group: c.security_context.as_ref().and_then(|s| s.run_as_group),
            })
            .collect();
        let meta = pod.metadata;
        SlimPod {
            name: meta.name.unwrap_or_default(),
            namespace: meta.namespace.unwrap_or_default(),
            labels: meta.labels.unwrap_or_default().into(),
            deleting: meta.deletion_timestamp.is_some(),
            node,
            running: pod.status.and_then(|s| s.phase).as_deref() == Some("Running"),
            volumes,
            containers,
            run_as_user: psc.as_ref().and_then(|p| p.run_as_user),
            run_as_group: psc.as_ref().and_then(|p| p.run_as_group),
            fs_group: psc.as_ref().and_then(|p| p.fs_group),
            supplemental_groups: psc.and_then(|p| p.supplemental_groups).unwrap_or_default(),
        }
    }
}

impl PodView {
    /// Reads a pod for `link`; `None` when no member of the link selects it.
    pub fn of(pod: &Pod, link: &IpcLink) -> Option<PodView> {
        PodView::of_slim(&SlimPod::of(pod), link)
    }

    /// Reads a cached pod for `link`; `None` when no member of the link selects it.
    pub fn of_slim(pod: &SlimPod, link: &IpcLink) -> Option<PodView> {
        let members = ipclink_core::model::members::members_of(link, &pod.labels);
        if members.is_empty() {
            return None;
        }
        let link_name = link.metadata.name.as_deref().unwrap_or_default();
        let volumes: Vec<&str> = pod
            .volumes
            .iter()
            .filter(|v| {
                v.inline_link.as_deref() == Some(link_name)
                    || (link.spec.claim.is_some() && v.claim.as_deref() == Some(link_name))
            })
            .map(|v| v.name.as_str())
            .collect();
        let uses_link = !volumes.is_empty();
        Some(PodView {
            name: pod.name.clone(),
            members,
            mounted: uses_link && pod.node.is_some() && pod.running,
            node: pod.node.clone(),
            uses_link,
            identities: identities(pod, &volumes),
        })
    }
}

/// The identities of the containers that mount one of `volumes` (every container when
/// `volumes` is empty or no container mounts them).
pub fn identities(pod: &SlimPod, volumes: &[&str]) -> Vec<Identity> {
    let mounting: Vec<&SlimContainer> = pod
        .containers
        .iter()
        .filter(|c| c.mounts.iter().any(|m| volumes.contains(&m.as_str())))
        .collect();
    let chosen = if mounting.is_empty() {
        pod.containers.iter().collect()
    } else {
        mounting
    };
    chosen
        .into_iter()
        .map(|c| {
            let uid = c.run_as_user.or(pod.run_as_user);
            let gid = c.run_as_group.or(pod.run_as_group);
            let mut groups: Vec<i64> = gid.into_iter().collect();
            groups.extend(pod.fs_group);
            groups.extend(pod.supplemental_groups.iter().copied());
            let mut groups: Vec<u32> = groups
                .into_iter()
                .filter_map(|g| u32::try_from(g).ok())
                .collect();
            groups.sort_unstable();
            groups.dedup();
            Identity {
                container: c.name.clone(),
                uid: uid.and_then(|u| u32::try_from(u).ok()),
                groups,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipclink_core::model::members::Labels;

    #[test]
    fn a_label_set_finds_every_label_and_only_those() {
        let map: BTreeMap<String, String> = [("app", "cam"), ("team", "vision"), ("tier", "prod")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let set = LabelSet::from(map.clone());
        for (k, v) in &map {
            assert_eq!(set.label(k), Some(v.as_str()), "{k}");
        }
        for absent in ["", "a", "apps", "zone"] {
            assert_eq!(set.label(absent), None, "{absent}");
        }
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            [("app", "cam"), ("team", "vision"), ("tier", "prod")]
        );
        assert_eq!(LabelSet::default().label("app"), None);
    }
}
