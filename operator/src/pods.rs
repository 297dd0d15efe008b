//! What the operator reads of a pod: which members of a link select it, where it runs,
//! whether it has the link mounted, and as whom its containers run.

use ipclink_core::IpcLink;
use ipclink_core::names::DRIVER_NAME;
use k8s_openapi::api::core::v1::{Pod, PodSpec};

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

impl PodView {
    /// Reads a pod for `link`; `None` when no member of the link selects it.
    pub fn of(pod: &Pod, link: &IpcLink) -> Option<PodView> {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let members = ipclink_core::members::members_of(link, &labels);
        if members.is_empty() {
            return None;
        }
        let link_name = link.metadata.name.as_deref().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let volumes: Vec<&str> = spec
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
            .filter(|v| {
                let inline = v.csi.as_ref().is_some_and(|c| {
                    c.driver == DRIVER_NAME
                        && c.volume_attributes
                            .as_ref()
                            .and_then(|a| a.get("link"))
                            .is_some_and(|l| l == link_name)
                });
                let claim = link.spec.claim.is_some()
                    && v.persistent_volume_claim
                        .as_ref()
                        .is_some_and(|c| c.claim_name == link_name);
                inline || claim
            })
            .map(|v| v.name.as_str())
            .collect();
        let uses_link = !volumes.is_empty();
        let identities = spec.map(|s| identities(s, &volumes)).unwrap_or_default();
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let node = spec.and_then(|s| s.node_name.clone());
        Some(PodView {
            name: pod.metadata.name.clone().unwrap_or_default(),
            members,
            mounted: uses_link && node.is_some() && phase == Some("Running"),
            node,
            uses_link,
            identities,
        })
    }
}

/// The identities of the containers that mount one of `volumes` (every container when
/// `volumes` is empty or no container mounts them).
pub fn identities(spec: &PodSpec, volumes: &[&str]) -> Vec<Identity> {
    let pod = spec.security_context.as_ref();
    let mounting: Vec<_> = spec
        .containers
        .iter()
        .filter(|c| {
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| volumes.contains(&m.name.as_str()))
        })
        .collect();
    let chosen = if mounting.is_empty() {
        spec.containers.iter().collect()
    } else {
        mounting
    };
    chosen
        .into_iter()
        .map(|c| {
            let sc = c.security_context.as_ref();
            let uid = sc
                .and_then(|s| s.run_as_user)
                .or_else(|| pod.and_then(|p| p.run_as_user));
            let gid = sc
                .and_then(|s| s.run_as_group)
                .or_else(|| pod.and_then(|p| p.run_as_group));
            let mut groups: Vec<i64> = gid.into_iter().collect();
            groups.extend(pod.and_then(|p| p.fs_group));
            groups.extend(
                pod.and_then(|p| p.supplemental_groups.clone())
                    .into_iter()
                    .flatten(),
            );
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
