//! The conditions of an IpcLink's status, typed: which conditions exist, what each may
//! say, and the constant reasons (users alert on them, Events carry them).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// The condition types the operator writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConditionType {
    /// The link serves every member (its phase is Ready): what `kubectl wait
    /// --for=condition=Ready` and GitOps health checks look at. Its reason when False is
    /// the phase, its message the conditions that do not hold.
    Ready,
    /// The spec passed validation (and its claim, if any, is usable).
    Accepted,
    /// Every member pod runs on one node.
    Scheduled,
    /// Every member has a pod with the link mounted.
    MembersReady,
    /// Every member's identity can use its channels as declared.
    PermissionsConsistent,
    /// Deletion has been asked for (present only then).
    Terminating,
    /// The node where the link lives serves its current spec; False while changes wait
    /// for the members to leave.
    SpecApplied,
}

impl ConditionType {
    /// The name in `status.conditions[].type`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::Accepted => "Accepted",
            ConditionType::Scheduled => "Scheduled",
            ConditionType::MembersReady => "MembersReady",
            ConditionType::PermissionsConsistent => "PermissionsConsistent",
            ConditionType::Terminating => "Terminating",
            ConditionType::SpecApplied => "SpecApplied",
        }
    }
}

/// `status.conditions[].status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    /// The condition holds.
    True,
    /// It does not.
    False,
    /// It cannot be told yet.
    Unknown,
}

impl Truth {
    /// The API's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Truth::True => "True",
            Truth::False => "False",
            Truth::Unknown => "Unknown",
        }
    }
}

/// Condition and Event reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Accepted=True.
    Valid,
    /// Accepted=False: the spec is wrong; the message names each field.
    InvalidSpec,
    /// Accepted=False: a PersistentVolumeClaim of the link's name exists and is not ours.
    ClaimConflict,
    /// Scheduled=True.
    OneNode,
    /// Scheduled=False.
    MembersOnDifferentNodes,
    /// Scheduled=Unknown: no member pod has a node yet.
    NoMemberScheduled,
    /// Scheduled=True for a node-scoped link: members on any nodes, an instance on each.
    NodeScoped,
    /// MembersReady=True.
    AllMembersMounted,
    /// MembersReady=False.
    MembersNotMounted,
    /// MembersReady=False: the spec has no member with a podSelector.
    NoMembers,
    /// PermissionsConsistent=True.
    Consistent,
    /// PermissionsConsistent=False.
    MemberCannotUseChannel,
    /// PermissionsConsistent=Unknown: the spec is invalid.
    NotChecked,
    /// Terminating=True: deletion waits for members to unmount (also an Event).
    WaitingForUnmount,
    /// SpecApplied=True.
    Applied,
    /// SpecApplied=False: changes that running members would notice wait until they
    /// have left; the message names each field (also an Event).
    WaitingForMembersToLeave,
    /// SpecApplied=Unknown: the node has not applied this spec yet.
    Applying,
    /// SpecApplied=Unknown: no node reports the link (it is made from the spec when its
    /// first member starts), or its node stopped answering.
    NotObserved,
    /// Ready=True, and the Event when the link became Ready.
    Ready,
    /// Ready=False: accepted, not yet usable (phase Pending).
    Pending,
    /// Ready=False: usable, with a problem (phase Degraded).
    Degraded,
    /// Ready=False: the spec is wrong (phase Invalid).
    Invalid,
    /// Ready=False: being deleted (phase Terminating).
    Terminating,
}

impl Reason {
    /// The reason as written in conditions and Events.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Valid => "Valid",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::ClaimConflict => "ClaimConflict",
            Reason::OneNode => "OneNode",
            Reason::MembersOnDifferentNodes => "MembersOnDifferentNodes",
            Reason::NoMemberScheduled => "NoMemberScheduled",
            Reason::NodeScoped => "NodeScoped",
            Reason::AllMembersMounted => "AllMembersMounted",
            Reason::MembersNotMounted => "MembersNotMounted",
            Reason::NoMembers => "NoMembers",
            Reason::Consistent => "Consistent",
            Reason::MemberCannotUseChannel => "MemberCannotUseChannel",
            Reason::NotChecked => "NotChecked",
            Reason::WaitingForUnmount => "WaitingForUnmount",
            Reason::Applied => "Applied",
            Reason::WaitingForMembersToLeave => "WaitingForMembersToLeave",
            Reason::Applying => "Applying",
            Reason::NotObserved => "NotObserved",
            Reason::Ready => "Ready",
            Reason::Pending => "Pending",
            Reason::Degraded => "Degraded",
            Reason::Invalid => "Invalid",
            Reason::Terminating => "Terminating",
        }
    }
}

/// What one condition says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// True, False or Unknown.
    pub truth: Truth,
    /// Why, as a constant.
    pub reason: Reason,
    /// Naming the member, pod, channel or field concerned.
    pub message: String,
}

impl Verdict {
    /// A verdict.
    pub fn new(truth: Truth, reason: Reason, message: impl Into<String>) -> Self {
        Verdict {
            truth,
            reason,
            message: message.into(),
        }
    }

    /// Whether the condition holds.
    pub fn holds(&self) -> bool {
        self.truth == Truth::True
    }

    /// Whether it is known not to hold.
    pub fn fails(&self) -> bool {
        self.truth == Truth::False
    }
}

/// Longest condition or Event message written (an Event's note takes at most 1 kB);
/// longer ones are cut with "...".
const MAX_MESSAGE: usize = 1024;

/// The API condition for `verdict`; its transition time moves only when its status
/// changes from what `old` says.
pub fn to_condition(
    old: &[Condition],
    generation: Option<i64>,
    now: &Time,
    type_: ConditionType,
    verdict: &Verdict,
) -> Condition {
    let (type_, status) = (type_.as_str(), verdict.truth.as_str());
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: verdict.reason.as_str().to_owned(),
        message: bounded(verdict.message.clone()),
        observed_generation: generation,
        last_transition_time: since,
    }
}

/// `s` shown printable (member-chosen names in it cannot reach a terminal as control
/// or bidi characters: `kubectl describe` prints messages raw), cut to the longest
/// message written.
pub fn bounded(s: String) -> String {
    let mut s = match ipclink_core::report::printable(&s) {
        std::borrow::Cow::Borrowed(_) => s,
        std::borrow::Cow::Owned(escaped) => escaped,
    };
    if s.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_message_is_cut_on_a_character_boundary() {
        let cut = bounded("é".repeat(600));
        assert!(cut.len() <= 1024, "{}", cut.len());
        assert!(cut.ends_with("..."));
        assert_eq!(bounded("short".into()), "short");
        // Names members chose reach `kubectl describe` escaped.
        let note = bounded("channel evil\n\u{1b}]0;pwned\u{7} \u{202e}x".into());
        assert_eq!(note, "channel evil\\x0a\\x1b]0;pwned\\x07 \\u{202e}x");
        let long = bounded("\u{1b}".repeat(600));
        assert!(long.len() <= 1024 && !long.contains('\u{1b}'), "{long}");
    }

    #[test]
    fn the_transition_time_stays_while_the_status_does() {
        let then = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let v = Verdict::new(Truth::True, Reason::OneNode, "on node a");
        let old = vec![to_condition(
            &[],
            Some(1),
            &then,
            ConditionType::Scheduled,
            &v,
        )];
        let again = to_condition(&old, Some(2), &now, ConditionType::Scheduled, &v);
        assert_eq!(again.last_transition_time, then);
        let flipped = Verdict::new(Truth::False, Reason::MembersOnDifferentNodes, "split");
        let changed = to_condition(&old, Some(2), &now, ConditionType::Scheduled, &flipped);
        assert_eq!(changed.last_transition_time, now);
        assert_eq!(
            (changed.status.as_str(), changed.reason.as_str()),
            ("False", "MembersOnDifferentNodes")
        );
    }
}
