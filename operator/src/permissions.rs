//! Whether each member's identity can use each channel as the spec declares: the
//! kernel's permission check (owner, group, other bits) run ahead of time against the
//! pods' securityContext, so a mismatch is a condition instead of an EACCES at 3 a.m.

use ipclink_core::spec::ChannelKind;
use ipclink_core::{IpcLink, LinkPlan, ObjectKind, ObjectPlan};
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

const READ: u32 = 4;
const WRITE: u32 = 2;
const SEARCH: u32 = 1;

/// The permission bits that apply to `who` for `object` (the kernel's order: owner,
/// then group, then other); root passes everything, as with CAP_DAC_OVERRIDE.
fn bits_for(object: &ObjectPlan, uid: u32, groups: &[u32]) -> u32 {
    if uid == 0 {
        7
    } else if uid == object.uid {
        (object.mode >> 6) & 7
    } else if groups.contains(&object.gid) {
        (object.mode >> 3) & 7
    } else {
        object.mode & 7
    }
}

fn verbs(bits: u32) -> String {
    let mut v = Vec::new();
    if bits & READ != 0 {
        v.push("read");
    }
    if bits & WRITE != 0 {
        v.push("write");
    }
    if bits & SEARCH != 0 {
        v.push("enter");
    }
    v.join(" and ")
}

/// What `member` needs on `object`: readers read, writers write (an shm writer maps the
/// region read-write, a socket writer binds in the directory), and everyone needs read
/// and write when the channel names no readers and no writers. Semaphores are opened
/// read-write by every libc. Socket directories also need search permission.
fn needs(link: &IpcLink, object: &ObjectPlan, member: &str) -> u32 {
    let Some(channel) = link.spec.channels.iter().find(|c| c.name == object.name) else {
        return READ | WRITE; // a semaphore
    };
    let reads = channel.readers.iter().any(|r| r == member);
    let writes = channel.writers.iter().any(|w| w == member);
    let undeclared = channel.readers.is_empty() && channel.writers.is_empty();
    let (reads, writes) = if undeclared {
        (true, true)
    } else {
        (reads, writes)
    };
    match channel.kind {
        ChannelKind::Fifo => (if reads { READ } else { 0 }) | (if writes { WRITE } else { 0 }),
        ChannelKind::Shm => {
            (if reads || writes { READ } else { 0 }) | (if writes { WRITE } else { 0 })
        }
        // Connecting to a socket needs search on the directory; binding one needs write.
        ChannelKind::Socket => {
            (if reads || writes { SEARCH } else { 0 }) | (if writes { WRITE } else { 0 })
        }
    }
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
                for object in &plan.objects {
                    let need = needs(link, object, member);
                    let have = bits_for(object, uid, &who.groups);
                    let missing = need & !have;
                    if missing != 0 {
                        let what = match object.kind {
                            ObjectKind::Semaphore { .. } => "semaphore",
                            _ => "channel",
                        };
                        failures.push(format!(
                            "member {member} (pod {}, container {}, uid {uid}, groups {:?}) cannot {} {what} {} (mode {:04o}, owner {}:{})",
                            pod.name,
                            who.container,
                            who.groups,
                            verbs(missing),
                            object.name,
                            object.mode,
                            object.uid,
                            object.gid
                        ));
                    }
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
