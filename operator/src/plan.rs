//! The pure stages of a reconcile: from a link and the pods its members select to the
//! status the operator writes and the Events a user must see. No client, no clock: the
//! caller passes `now`, so every stage is tested from YAML fixtures.

use std::collections::{BTreeMap, HashMap};

use ipclink_core::spec::{ChannelStatus, IpcLinkStatus, MemberStatus, Phase};
use ipclink_core::{IpcLink, LinkPlan, Problems};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::permissions::{self, Identity};

/// The CSI driver name pods reference in inline volumes.
pub const DRIVER: &str = "csi.ipclink.dev";

/// Condition types, reasons and Event reasons: constants, so users can alert on them.
pub mod reason {
    /// Condition: the spec passed validation.
    pub const ACCEPTED: &str = "Accepted";
    /// Condition: every member pod runs on one node.
    pub const SCHEDULED: &str = "Scheduled";
    /// Condition: every member has a pod with the link mounted.
    pub const MEMBERS_READY: &str = "MembersReady";
    /// Condition: every member's identity can use its channels as declared.
    pub const PERMISSIONS_CONSISTENT: &str = "PermissionsConsistent";

    /// Accepted=True.
    pub const VALID: &str = "Valid";
    /// Accepted=False: the spec is wrong; the message names each field.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Accepted=False: a PersistentVolumeClaim of the link's name exists and is not ours.
    pub const CLAIM_CONFLICT: &str = "ClaimConflict";
    /// Scheduled=True.
    pub const ONE_NODE: &str = "OneNode";
    /// Scheduled=False.
    pub const SPLIT_ACROSS_NODES: &str = "MembersOnDifferentNodes";
    /// Scheduled=Unknown: no member pod has a node yet.
    pub const NOT_SCHEDULED: &str = "NoMemberScheduled";
    /// MembersReady=True.
    pub const ALL_MOUNTED: &str = "AllMembersMounted";
    /// MembersReady=False.
    pub const MEMBERS_MISSING: &str = "MembersNotMounted";
    /// MembersReady=False: the spec has no member with a podSelector.
    pub const NO_MEMBERS: &str = "NoMembers";
    /// PermissionsConsistent=True.
    pub const CONSISTENT: &str = "Consistent";
    /// PermissionsConsistent=False.
    pub const MEMBER_CANNOT_USE: &str = "MemberCannotUseChannel";
    /// PermissionsConsistent=Unknown: the spec is invalid.
    pub const NOT_CHECKED: &str = "NotChecked";
    /// Event: the link became Ready.
    pub const READY: &str = "Ready";
    /// Condition: deletion has been asked for (present only then).
    pub const TERMINATING: &str = "Terminating";
    /// Event and condition reason while deletion waits for members.
    pub const WAITING_FOR_UNMOUNT: &str = "WaitingForUnmount";
}

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
                    c.driver == DRIVER
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
        let identities = spec
            .map(|s| permissions::identities(s, &volumes))
            .unwrap_or_default();
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

/// What else the operator knows about a link when it plans.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Node chosen for the link's claim (the scheduler's `selected-node`), if any.
    pub claim_node: Option<String>,
    /// Why the link's claim cannot be used, if it cannot.
    pub claim_conflict: Option<String>,
    /// Latest depths gathered from the node plugins.
    pub channels: Option<Vec<ChannelStatus>>,
}

/// An Event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Warning (something a user must fix) or Normal.
    pub warning: bool,
    /// One of [`reason`].
    pub reason: &'static str,
    /// What happened, naming the member, pod, channel or field.
    pub message: String,
}

/// The outcome of planning one link.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Status to write.
    pub status: IpcLinkStatus,
    /// Events for the changes between the old and the new status.
    pub notes: Vec<Note>,
}

impl Plan {
    /// The phase the status shows.
    pub fn phase(&self) -> Phase {
        self.status.phase.unwrap_or(Phase::Pending)
    }
}

/// Plan (pure): the status a link should have given its pods, and the Events the change
/// from its current status calls for. `terminating` is set while deletion waits.
///
/// `validated` is the outcome of the validate stage for `link` (`ipclink_core::validate`),
/// which the caller has already needed for its own work.
pub fn plan(
    link: &IpcLink,
    validated: &Result<LinkPlan, Problems>,
    pods: &[PodView],
    observed: &Observed,
    now: &Time,
) -> Plan {
    let old = link.status.clone().unwrap_or_default();
    let generation = link.metadata.generation;
    let terminating = link.metadata.deletion_timestamp.is_some();
    let cond = |type_: &str, status: &str, reason: &str, message: String| {
        condition(
            &old.conditions,
            generation,
            now,
            type_,
            status,
            reason,
            message,
        )
    };

    let accepted = match (validated, &observed.claim_conflict) {
        (Err(problems), _) => cond(
            reason::ACCEPTED,
            "False",
            reason::INVALID_SPEC,
            problems
                .0
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ),
        (Ok(_), Some(conflict)) => cond(
            reason::ACCEPTED,
            "False",
            reason::CLAIM_CONFLICT,
            conflict.clone(),
        ),
        (Ok(plan), None) => cond(
            reason::ACCEPTED,
            "True",
            reason::VALID,
            format!(
                "{} channels and semaphores on a {} byte tmpfs",
                plan.objects.len(),
                plan.size_limit
            ),
        ),
    };

    let (node, scheduled) = scheduling(pods, observed.claim_node.as_deref());
    let scheduled = cond(reason::SCHEDULED, scheduled.0, scheduled.1, scheduled.2);
    let ready = members_ready(link, pods);
    let members_ready = cond(reason::MEMBERS_READY, ready.0, ready.1, ready.2);
    let perms = match validated {
        Ok(plan) => permissions::check(link, plan, pods),
        Err(_) => (
            "Unknown",
            reason::NOT_CHECKED,
            "the spec is invalid".to_owned(),
        ),
    };
    let permissions = cond(reason::PERMISSIONS_CONSISTENT, perms.0, perms.1, perms.2);

    let phase = if terminating {
        Phase::Terminating
    } else if accepted.status != "True" {
        Phase::Invalid
    } else if scheduled.status == "False" || permissions.status == "False" {
        Phase::Degraded
    } else if scheduled.status == "True" && members_ready.status == "True" {
        Phase::Ready
    } else {
        Phase::Pending
    };

    let mut conditions = vec![accepted, scheduled, members_ready, permissions];
    if terminating {
        let holding: Vec<&str> = pods
            .iter()
            .filter(|p| p.mounted)
            .map(|p| p.name.as_str())
            .collect();
        let message = if holding.is_empty() {
            "no member has the link mounted; cleaning up".to_owned()
        } else {
            format!(
                "deletion waits until no member has the link mounted; still mounted by pod {}",
                holding.join(", ")
            )
        };
        conditions.push(cond(
            reason::TERMINATING,
            "True",
            reason::WAITING_FOR_UNMOUNT,
            message,
        ));
    }

    let mut members: Vec<MemberStatus> = pods
        .iter()
        .flat_map(|p| {
            p.members.iter().map(|m| MemberStatus {
                member: m.clone(),
                pod: p.name.clone(),
                node: p.node.clone(),
                mounted: p.mounted,
            })
        })
        .collect();
    members.sort_by(|a, b| (&a.member, &a.pod).cmp(&(&b.member, &b.pod)));
    let channel_count = (link.spec.channels.len() + link.spec.semaphores.len()) as i32;
    let status = IpcLinkStatus {
        phase: Some(phase),
        node,
        conditions,
        member_count: Some(pods.len() as i32),
        members,
        channels: observed.channels.clone().unwrap_or(old.channels.clone()),
        channel_count: Some(channel_count),
        observed_generation: generation,
    };
    let notes = notes(&old, &status);
    Plan { status, notes }
}

/// One condition; its transition time moves only when its status changes.
fn condition(
    old: &[Condition],
    generation: Option<i64>,
    now: &Time,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
) -> Condition {
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: truncate(message, 1024),
        observed_generation: generation,
        last_transition_time: since,
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// The link's node and the Scheduled condition: every member pod must be on one node
/// (and on the claim's node, when the link has one).
fn scheduling(
    pods: &[PodView],
    claim_node: Option<&str>,
) -> (Option<String>, (&'static str, &'static str, String)) {
    let mut by_node: BTreeMap<&str, Vec<&PodView>> = BTreeMap::new();
    for p in pods {
        if let Some(n) = &p.node {
            by_node.entry(n).or_default().push(p);
        }
    }
    // The claim's node wins, then the node with most members (ties: by name).
    let node = claim_node.or_else(|| {
        by_node
            .iter()
            .max_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.0.cmp(a.0)))
            .map(|(n, _)| *n)
    });
    let Some(node) = node else {
        return (
            None,
            (
                "Unknown",
                reason::NOT_SCHEDULED,
                "no member pod is bound to a node yet".to_owned(),
            ),
        );
    };
    let elsewhere: Vec<String> = by_node
        .iter()
        .filter(|(n, _)| **n != node)
        .flat_map(|(n, ps)| {
            ps.iter()
                .map(move |p| format!("member {} pod {} on node {n}", p.members.join(","), p.name))
        })
        .collect();
    if elsewhere.is_empty() {
        let count = by_node.get(node).map_or(0, Vec::len);
        (
            Some(node.to_owned()),
            (
                "True",
                reason::ONE_NODE,
                format!("{count} member pods on node {node}"),
            ),
        )
    } else {
        (
            Some(node.to_owned()),
            (
                "False",
                reason::SPLIT_ACROSS_NODES,
                format!(
                    "the link lives on node {node}, but {}; members of a link must share one node",
                    elsewhere.join(", ")
                ),
            ),
        )
    }
}

fn members_ready(link: &IpcLink, pods: &[PodView]) -> (&'static str, &'static str, String) {
    let selecting: Vec<&str> = link
        .spec
        .members
        .iter()
        .filter(|m| m.pod_selector.is_some())
        .map(|m| m.name.as_str())
        .collect();
    if selecting.is_empty() {
        return (
            "False",
            reason::NO_MEMBERS,
            "no member has a podSelector, so no pod may mount the link".to_owned(),
        );
    }
    let mut missing = Vec::new();
    for m in &selecting {
        let mine: Vec<&PodView> = pods
            .iter()
            .filter(|p| p.members.iter().any(|x| x == m))
            .collect();
        if mine.is_empty() {
            missing.push(format!("member {m}: no pod selected"));
        } else if !mine.iter().any(|p| p.mounted) {
            let names: Vec<&str> = mine.iter().map(|p| p.name.as_str()).collect();
            missing.push(format!(
                "member {m}: pod {} has not mounted the link",
                names.join(", ")
            ));
        }
    }
    if missing.is_empty() {
        (
            "True",
            reason::ALL_MOUNTED,
            format!(
                "every member ({}) has a pod with the link mounted",
                selecting.join(", ")
            ),
        )
    } else {
        ("False", reason::MEMBERS_MISSING, missing.join("; "))
    }
}

/// Events for what changed: a condition turning bad (Warning, with its message), a
/// condition recovering, and the link becoming Ready.
fn notes(old: &IpcLinkStatus, new: &IpcLinkStatus) -> Vec<Note> {
    let before: HashMap<&str, &Condition> = old
        .conditions
        .iter()
        .map(|c| (c.type_.as_str(), c))
        .collect();
    let mut notes = Vec::new();
    for c in &new.conditions {
        let prev = before.get(c.type_.as_str());
        let changed = prev.is_none_or(|p| p.status != c.status || p.reason != c.reason);
        // MembersReady=False is the normal state of a new link, not worth a Warning.
        if changed && c.status == "False" && c.type_ != reason::MEMBERS_READY {
            notes.push(Note {
                warning: true,
                reason: static_reason(&c.reason),
                message: c.message.clone(),
            });
        }
    }
    if new.phase == Some(Phase::Ready) && old.phase != Some(Phase::Ready) {
        notes.push(Note {
            warning: false,
            reason: reason::READY,
            message: format!(
                "every member is mounted on node {}",
                new.node.as_deref().unwrap_or("?")
            ),
        });
    }
    notes
}

fn static_reason(r: &str) -> &'static str {
    use reason::*;
    [
        INVALID_SPEC,
        CLAIM_CONFLICT,
        SPLIT_ACROSS_NODES,
        MEMBERS_MISSING,
        NO_MEMBERS,
        MEMBER_CANNOT_USE,
    ]
    .into_iter()
    .find(|c| *c == r)
    .unwrap_or("ConditionFalse")
}
