//! What the controller compares before it writes a link's status: the status as the API
//! server gives it back (second precision), depth-only changes, and the fingerprint of
//! a status this replica has just written.

use std::time::{Duration, Instant};

use ipclink_core::model::spec::IpcLinkStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// A status this replica wrote: when, and a fingerprint of it (transition times aside).
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub(crate) at: Instant,
    pub(crate) fingerprint: u64,
}

/// How long a reconcile trusts that a cached link older than this replica's own last
/// write of it is merely stale (its watch event is on the way), and waits instead of
/// writing the same status again.
pub(crate) const OWN_WRITE_SETTLE: Duration = Duration::from_secs(2);

/// A fingerprint of `status` without its transition times (see [`same_but_time`]).
pub(crate) fn fingerprint(status: &IpcLinkStatus) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&without_times(status))
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

/// `status` as the API server gives it back, transition times aside: conditions'
/// transition times cleared, the depths' stamp in whole seconds.
fn without_times(status: &IpcLinkStatus) -> IpcLinkStatus {
    let mut s = status.clone();
    for c in &mut s.conditions {
        c.last_transition_time = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    }
    s.depths_observed_time = s
        .depths_observed_time
        .map(crate::plan::observed::whole_seconds);
    s
}

/// Whether `new` is what `old` already says, transition times aside (a status read
/// back from the API server has second precision).
pub fn same_but_time(old: Option<&IpcLinkStatus>, new: &IpcLinkStatus) -> bool {
    old.is_some_and(|old| without_times(old) == without_times(new))
}

/// Whether `new` differs from `old` in its depths only (the figures of `channels`,
/// `createdObjects`, when they were observed and whether they are stale).
pub fn only_depths_differ(old: Option<&IpcLinkStatus>, new: &IpcLinkStatus) -> bool {
    let Some(old) = old else { return false };
    let strip = |s: &IpcLinkStatus| IpcLinkStatus {
        channels: Vec::new(),
        created_objects: None,
        depths_observed_time: None,
        depths_stale: false,
        ..s.clone()
    };
    same_but_time(Some(&strip(old)), &strip(new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_read_back_in_whole_seconds_is_not_written_again() {
        let now = k8s_openapi::jiff::Timestamp::now();
        let planned = IpcLinkStatus {
            depths_observed_time: Some(Time(now)),
            ..IpcLinkStatus::default()
        };
        // The API server keeps seconds: what it returns is the same status.
        let stored: IpcLinkStatus = serde_json::from_value(serde_json::json!({
            "depthsObservedTime": now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        }))
        .expect("status");
        assert!(same_but_time(Some(&stored), &planned));
        let later = IpcLinkStatus {
            depths_observed_time: Some(Time(now + k8s_openapi::jiff::SignedDuration::from_secs(2))),
            ..IpcLinkStatus::default()
        };
        assert!(!same_but_time(Some(&stored), &later));
        assert!(only_depths_differ(Some(&stored), &later));
        let other_phase = IpcLinkStatus {
            phase: Some(ipclink_core::model::spec::Phase::Ready),
            ..later
        };
        assert!(!only_depths_differ(Some(&stored), &other_phase));
    }
}
