//! The pure stages of a reconcile: from a link and the pods its members select to the
//! status the operator writes and the Events a user must see. No client, no clock: the
//! caller passes `now`, so every stage is tested from YAML fixtures.

pub mod conditions;
pub mod observed;
pub mod permissions;

use std::collections::{BTreeMap, HashMap};

use ipclink_core::model::spec::{IpcLinkStatus, MemberStatus, NodeInstance, Phase, Scope};
use ipclink_core::{IpcLink, LinkPlan, Problems};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::plan::conditions::{ConditionType, Reason, Truth, Verdict, bounded, to_condition};
use crate::plan::observed::LinkDepths;
use crate::pods::PodView;

/// Most nodes a node-scoped link's status lists (`nodeCount` counts them all): a status
/// stays well under the API server's object size on any cluster.
pub const MAX_NODE_ROWS: usize = 256;

/// What else the operator knows about a link when it plans.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Node the link is bound to, if any: the scheduler's `selected-node` of a
    /// persistent link's claim, or the node whose plugin claimed an inline link.
    pub bound_node: Option<String>,
    /// Why the link's claim cannot be used, if it cannot.
    pub claim_conflict: Option<String>,
    /// Latest depths gathered from the node plugins.
    pub channels: Option<LinkDepths>,
}

/// An Event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Warning (something a user must fix) or Normal.
    pub warning: bool,
    /// Why, as a constant.
    pub reason: Reason,
    /// What happened, naming the member, pod, channel or field.
    pub message: String,
}

/// The status a link should have and the Events that the change to it calls for.
#[derive(Debug, Clone)]
pub struct StatusPlan {
    /// Status to write.
    pub status: IpcLinkStatus,
    /// Events for the changes between the old and the new status.
    pub notes: Vec<Note>,
}

impl StatusPlan {
    /// The phase the status shows.
    pub fn phase(&self) -> Phase {
        self.status.phase.unwrap_or(Phase::Pending)
    }
}

/// Plan (pure): the status a link should have given its pods, and the Events the change
/// from its current status calls for. A link being deleted is `Terminating`, with a
/// condition naming the members that still hold it.
///
/// `validated` is the outcome of the validate stage for `link` (`ipclink_core::validate`),
/// which the caller has already needed for its own work.
pub fn plan(
    link: &IpcLink,
    validated: &Result<LinkPlan, Problems>,
    pods: &[PodView],
    observed: &Observed,
    now: &Time,
) -> StatusPlan {
    let old = link.status.clone().unwrap_or_default();
    let generation = link.metadata.generation;
    let terminating = link.metadata.deletion_timestamp.is_some();

    let accepted = match (validated, &observed.claim_conflict) {
        (Err(problems), _) => Verdict::new(
            Truth::False,
            Reason::InvalidSpec,
            problems
                .0
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ),
        (Ok(_), Some(conflict)) => Verdict::new(Truth::False, Reason::ClaimConflict, conflict),
        (Ok(plan), None) => Verdict::new(
            Truth::True,
            Reason::Valid,
            format!(
                "{} channels and semaphores on a {} byte tmpfs",
                plan.objects.len(),
                plan.size_limit
            ),
        ),
    };
    let node_scoped = link.spec.scope == Scope::Node;
    // A node-scoped link has one instance per node, each reporting its own figures (in
    // its node's metrics and `kubectl ipclink top`): one status cannot hold them, so
    // it shows none rather than whichever node answered last.
    let observed_channels = observed.channels.as_ref().filter(|_| !node_scoped);
    let (node, scheduled) = if node_scoped {
        (None, spread(pods))
    } else {
        scheduling(pods, observed.bound_node.as_deref())
    };
    let members_ready = members_ready(link, pods);
    let permissions = match validated {
        Ok(plan) => permissions::check(link, plan, pods),
        Err(_) => Verdict::new(Truth::Unknown, Reason::NotChecked, "the spec is invalid"),
    };

    let phase = if terminating {
        Phase::Terminating
    } else if !accepted.holds() {
        Phase::Invalid
    } else if scheduled.fails() || permissions.fails() {
        Phase::Degraded
    } else if scheduled.holds() && members_ready.holds() {
        Phase::Ready
    } else {
        Phase::Pending
    };

    let ready = readiness(
        phase,
        node.as_deref(),
        &[
            (ConditionType::Accepted, &accepted),
            (ConditionType::Scheduled, &scheduled),
            (ConditionType::MembersReady, &members_ready),
            (ConditionType::PermissionsConsistent, &permissions),
        ],
    );
    let mut verdicts = vec![
        (ConditionType::Ready, ready),
        (ConditionType::Accepted, accepted),
        (ConditionType::Scheduled, scheduled),
        (ConditionType::MembersReady, members_ready),
        (ConditionType::PermissionsConsistent, permissions),
    ];
    verdicts.push((
        ConditionType::SpecApplied,
        if node_scoped && validated.is_ok() {
            Verdict::new(
                Truth::Unknown,
                Reason::NotObserved,
                "scope: Node: each node's instance applies the spec when a member mounts it there; see each node's metrics",
            )
        } else {
            spec_applied(validated, observed_channels)
        },
    ));
    if terminating {
        verdicts.push((ConditionType::Terminating, deletion(pods)));
    }
    let conditions = verdicts
        .iter()
        .map(|(t, v)| to_condition(&old.conditions, generation, now, *t, v))
        .collect();

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
    let mut nodes = if node_scoped {
        instances(pods)
    } else {
        Vec::new()
    };
    let node_count = node_scoped.then_some(nodes.len() as i32);
    nodes.truncate(MAX_NODE_ROWS);
    let status = IpcLinkStatus {
        phase: Some(phase),
        node,
        node_count,
        nodes,
        conditions,
        member_count: Some(pods.len() as i32),
        members,
        channels: observed_channels.map_or(old.channels.clone(), |d| d.channels.clone()),
        created_objects: observed_channels.map_or(old.created_objects, |d| {
            (d.created > 0).then_some(d.created)
        }),
        // Figures the status already shows keep their stamp: a restarted or new leader
        // observes them afresh, and would otherwise rewrite every link.
        depths_observed_time: match observed_channels {
            Some(d)
                if !(old.depths_observed_time.is_some()
                    && d.channels == old.channels
                    && (d.created > 0).then_some(d.created) == old.created_objects
                    && d.stale == old.depths_stale) =>
            {
                d.observed.clone()
            }
            _ => old.depths_observed_time.clone(),
        },
        depths_stale: observed_channels.map_or(old.depths_stale, |d| d.stale),
        channel_count: Some(channel_count),
        observed_generation: generation,
    };
    let notes = notes(&old, &verdicts, &status);
    StatusPlan { status, notes }
}

/// The Ready condition, from the phase and the conditions it sums up.
fn readiness(phase: Phase, node: Option<&str>, parts: &[(ConditionType, &Verdict)]) -> Verdict {
    let reason = match phase {
        Phase::Ready => return Verdict::new(Truth::True, Reason::Ready, ready_message(node)),
        Phase::Pending => Reason::Pending,
        Phase::Degraded => Reason::Degraded,
        Phase::Invalid => Reason::Invalid,
        Phase::Terminating => Reason::Terminating,
    };
    let mut why: Vec<String> = parts
        .iter()
        .filter(|(_, v)| !v.holds())
        .map(|(t, v)| format!("{}: {}", t.as_str(), v.message))
        .collect();
    if phase == Phase::Terminating {
        why.insert(0, "the link is being deleted".into());
    }
    Verdict::new(Truth::False, reason, why.join("; "))
}

/// What Ready=True says: where the members have the link (a node-scoped link has no one
/// node).
fn ready_message(node: Option<&str>) -> String {
    match node {
        Some(node) => format!("every member is mounted on node {node}"),
        None => "every member is mounted, each on its own node's instance".to_owned(),
    }
}

/// The Scheduled condition of a node-scoped link: members may run on any node, each
/// node with its own instance; nothing is wrong until no member is on a node.
fn spread(pods: &[PodView]) -> Verdict {
    let nodes: std::collections::BTreeSet<&str> =
        pods.iter().filter_map(|p| p.node.as_deref()).collect();
    if nodes.is_empty() {
        return Verdict::new(
            Truth::Unknown,
            Reason::NoMemberScheduled,
            "no member pod is bound to a node yet",
        );
    }
    let placed = pods.iter().filter(|p| p.node.is_some()).count();
    Verdict::new(
        Truth::True,
        Reason::NodeScoped,
        format!(
            "{placed} member pods on {} nodes (scope: Node: each node holds its own instance)",
            nodes.len()
        ),
    )
}

/// The member pods of a node-scoped link per node, sorted by node.
fn instances(pods: &[PodView]) -> Vec<NodeInstance> {
    let mut by_node: BTreeMap<&str, NodeInstance> = BTreeMap::new();
    for p in pods {
        if let Some(n) = p.node.as_deref() {
            let e = by_node.entry(n).or_insert_with(|| NodeInstance {
                node: n.to_owned(),
                ..NodeInstance::default()
            });
            e.members += 1;
            e.mounted += i32::from(p.mounted);
        }
    }
    by_node.into_values().collect()
}

/// The Terminating condition: deletion waits until no member has the link mounted.
fn deletion(pods: &[PodView]) -> Verdict {
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
    Verdict::new(Truth::True, Reason::WaitingForUnmount, message)
}

/// The link's node and the Scheduled condition: every member pod must be on one node
/// (and on the claim's node, when the link has one).
fn scheduling(pods: &[PodView], bound_node: Option<&str>) -> (Option<String>, Verdict) {
    let mut by_node: BTreeMap<&str, Vec<&PodView>> = BTreeMap::new();
    for p in pods {
        if let Some(n) = &p.node {
            by_node.entry(n).or_default().push(p);
        }
    }
    // The claim's node wins, then the node with most members (ties: by name).
    let node = bound_node.or_else(|| {
        by_node
            .iter()
            .max_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.0.cmp(a.0)))
            .map(|(n, _)| *n)
    });
    let Some(node) = node else {
        return (
            None,
            Verdict::new(
                Truth::Unknown,
                Reason::NoMemberScheduled,
                "no member pod is bound to a node yet",
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
    let verdict = if elsewhere.is_empty() {
        let count = by_node.get(node).map_or(0, Vec::len);
        Verdict::new(
            Truth::True,
            Reason::OneNode,
            format!("{count} member pods on node {node}"),
        )
    } else {
        Verdict::new(
            Truth::False,
            Reason::MembersOnDifferentNodes,
            format!(
                "the link lives on node {node}, but {}; members of a link must share one node",
                elsewhere.join(", ")
            ),
        )
    };
    (Some(node.to_owned()), verdict)
}

fn members_ready(link: &IpcLink, pods: &[PodView]) -> Verdict {
    let selecting: Vec<&str> = link
        .spec
        .members
        .iter()
        .filter(|m| m.pod_selector.is_some())
        .map(|m| m.name.as_str())
        .collect();
    if selecting.is_empty() {
        return Verdict::new(
            Truth::False,
            Reason::NoMembers,
            "no member has a podSelector, so no pod may mount the link",
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
        Verdict::new(
            Truth::True,
            Reason::AllMembersMounted,
            format!(
                "every member ({}) has a pod with the link mounted",
                selecting.join(", ")
            ),
        )
    } else {
        Verdict::new(Truth::False, Reason::MembersNotMounted, missing.join("; "))
    }
}

/// Whether the node where the link lives serves its spec, as that node reports it.
fn spec_applied(validated: &Result<LinkPlan, Problems>, seen: Option<&LinkDepths>) -> Verdict {
    let plan = match validated {
        Err(_) => {
            return Verdict::new(
                Truth::Unknown,
                Reason::NotChecked,
                "the spec is invalid; a live link keeps serving its last valid spec",
            );
        }
        Ok(plan) => plan,
    };
    match seen {
        None => Verdict::new(
            Truth::Unknown,
            Reason::NotObserved,
            "no node reports the link; it is made from this spec when its first member starts",
        ),
        Some(d) if d.stale => Verdict::new(
            Truth::Unknown,
            Reason::NotObserved,
            "the node plugin holding the link stopped answering",
        ),
        Some(d) if d.spec.as_deref() != Some(plan.digest().as_str()) => Verdict::new(
            Truth::Unknown,
            Reason::Applying,
            "the node holding the link has not applied this spec yet",
        ),
        Some(d) if !d.pending.is_empty() => Verdict::new(
            Truth::False,
            Reason::WaitingForMembersToLeave,
            d.pending
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ),
        Some(_) => Verdict::new(Truth::True, Reason::Applied, "the link serves its spec"),
    }
}

/// Events for what changed: a condition turning bad (Warning, with its message), and
/// the link becoming Ready.
fn notes(
    old: &IpcLinkStatus,
    verdicts: &[(ConditionType, Verdict)],
    new: &IpcLinkStatus,
) -> Vec<Note> {
    let before: HashMap<&str, &Condition> = old
        .conditions
        .iter()
        .map(|c| (c.type_.as_str(), c))
        .collect();
    let mut notes = Vec::new();
    for (type_, v) in verdicts {
        let changed = before
            .get(type_.as_str())
            .is_none_or(|p| p.status != v.truth.as_str() || p.reason != v.reason.as_str());
        // MembersReady=False is the normal state of a new link, not worth a Warning;
        // Ready=False sums up the others, which say it themselves.
        if changed
            && v.fails()
            && !matches!(type_, ConditionType::MembersReady | ConditionType::Ready)
        {
            notes.push(Note {
                warning: true,
                reason: v.reason,
                message: bounded(v.message.clone()),
            });
        }
    }
    if new.phase == Some(Phase::Ready) && old.phase != Some(Phase::Ready) {
        notes.push(Note {
            warning: false,
            reason: Reason::Ready,
            message: ready_message(new.node.as_deref()),
        });
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipclink_core::model::spec::ChannelStatus;

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).expect("time"))
    }

    fn depths(queued: u64, observed: i64) -> LinkDepths {
        LinkDepths {
            channels: vec![ChannelStatus {
                name: "events".into(),
                kind: "fifo".into(),
                queue_bytes: Some(queued),
                value: None,
                discovered: false,
            }],
            created: 0,
            observed: Some(at(observed)),
            ..LinkDepths::default()
        }
    }

    #[test]
    fn spec_applied_says_what_the_node_serves() {
        let link = ipclink_core::parse_links(
            "vision",
            "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: {name: frames, namespace: vision}\nspec:\n  channels: [{name: events, kind: fifo}]\n",
        )
        .expect("link")
        .remove(0);
        let validated = ipclink_core::validate(&link);
        let digest = validated.as_ref().expect("valid").digest();
        let said = |d: Option<LinkDepths>| {
            let v = spec_applied(&validated, d.as_ref());
            (v.truth, v.reason)
        };
        assert_eq!(said(None), (Truth::Unknown, Reason::NotObserved));
        let old = LinkDepths {
            spec: Some("0123456789abcdef".into()),
            ..depths(0, 1)
        };
        assert_eq!(said(Some(old)), (Truth::Unknown, Reason::Applying));
        let serving = LinkDepths {
            spec: Some(digest.clone()),
            ..depths(0, 1)
        };
        assert_eq!(said(Some(serving.clone())), (Truth::True, Reason::Applied));
        let waiting = LinkDepths {
            pending: vec![ipclink_core::Problem::new(
                "spec.channels[0].kind",
                "events is a live fifo",
            )],
            ..serving.clone()
        };
        let v = spec_applied(&validated, Some(&waiting));
        assert_eq!(
            (v.truth, v.reason),
            (Truth::False, Reason::WaitingForMembersToLeave)
        );
        assert!(v.message.contains("spec.channels[0].kind"), "{}", v.message);
        let stale = LinkDepths {
            stale: true,
            ..serving
        };
        assert_eq!(said(Some(stale)), (Truth::Unknown, Reason::NotObserved));
    }

    #[test]
    fn figures_already_shown_keep_their_stamp() {
        let mut link = ipclink_core::parse_links(
            "vision",
            "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: {name: frames, namespace: vision}\nspec:\n  channels: [{name: events, kind: fifo}]\n",
        )
        .expect("link")
        .remove(0);
        let validated = ipclink_core::validate(&link);
        let first = Observed {
            channels: Some(depths(7, 1_000)),
            ..Observed::default()
        };
        let status = plan(&link, &validated, &[], &first, &at(1_000)).status;
        assert_eq!(status.depths_observed_time, Some(at(1_000)));
        link.status = Some(status);
        // A new leader sees the same figures later: nothing to write.
        let again = Observed {
            channels: Some(depths(7, 2_000)),
            ..Observed::default()
        };
        let status = plan(&link, &validated, &[], &again, &at(2_000)).status;
        assert_eq!(status.depths_observed_time, Some(at(1_000)));
        assert_eq!(Some(&status), link.status.as_ref());
        // New figures bring their own stamp.
        let moved = Observed {
            channels: Some(depths(9, 3_000)),
            ..Observed::default()
        };
        let status = plan(&link, &validated, &[], &moved, &at(3_000)).status;
        assert_eq!(status.depths_observed_time, Some(at(3_000)));
    }
}
