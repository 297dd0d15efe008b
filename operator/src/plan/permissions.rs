//! Whether each member's identity can use each channel as the spec declares: the
//! kernel's permission check (owner, group, other bits) run ahead of time against the
//! pods' securityContext, so a mismatch is a condition instead of an EACCES at 3 a.m.

use ipclink_core::model::access::denials;
use ipclink_core::{IpcLink, LinkPlan};

use crate::plan::conditions::{Reason, Truth, Verdict};
use crate::pods::PodView;

/// The PermissionsConsistent condition, naming each member, pod, container and channel
/// that does not fit.
pub fn check(link: &IpcLink, plan: &LinkPlan, pods: &[PodView]) -> Verdict {
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
        return Verdict::new(
            Truth::False,
            Reason::MemberCannotUseChannel,
            failures.join("; "),
        );
    }
    let mut message = format!("{checked} member containers can use their channels as declared");
    if !unknown.is_empty() {
        message.push_str(&format!(
            "; not checked (no runAsUser, the image decides): {}",
            unknown.join(", ")
        ));
    }
    Verdict::new(Truth::True, Reason::Consistent, message)
}
