//! Whether each member's identity can use each channel as the spec declares: the
//! kernel's permission check (owner, group, other bits) run ahead of time against the
//! pods' securityContext, so a mismatch is a condition instead of an EACCES at 3 a.m.

use ipclink_core::access::denials;
use ipclink_core::{IpcLink, LinkPlan};
use k8s_openapi::api::core::v1::PodSpec;

use crate::plan::{PodView, reason};

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

/// The PermissionsConsistent condition: (status, reason, message naming each member,
/// pod, container and channel that does not fit).
pub fn check(
    link: &IpcLink,
    plan: &LinkPlan,
    pods: &[PodView],
) -> (&'static str, &'static str, String) {
    let mut failures = Vec::new();
    let mut checked = 0usize;
    let mut unknown = Vec::new();
    for pod in pods {
        for who in &pod.identities {
            let Some(uid) = who.uid else {
                unknown.push(format!("pod {} container {}", pod.name, who.container));
                continue;
            };
            checked += 1;
            for member in &pod.members {
                for d in denials(link, plan, member, uid, &who.groups) {
                    failures.push(format!(
                        "member {member} (pod {}, container {}, uid {uid}, groups {:?}) {d}",
                        pod.name, who.container, who.groups,
                    ));
                }
            }
        }
    }
    if !failures.is_empty() {
        return ("False", reason::MEMBER_CANNOT_USE, failures.join("; "));
    }
    let mut message = format!("{checked} member containers can use their channels as declared");
    if !unknown.is_empty() {
        message.push_str(&format!(
            "; not checked (no runAsUser, the image decides): {}",
            unknown.join(", ")
        ));
    }
    ("True", reason::CONSISTENT, message)
}
