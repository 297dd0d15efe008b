//! Whether a reconcile writes a link's status: [`StatusWriter`] owns the throttle and
//! answers Write, Wait or Unchanged, comparing the status as the API server gives it
//! back (second precision), depth-only changes, and the fingerprint of a status this
//! replica has just written.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipclink_core::LinkKey;
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

/// What to do with a planned status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Write it now (and call [`StatusWriter::wrote`]).
    Write,
    /// Look again after this long: the depths alone changed within the interval, or
    /// this replica wrote exactly this a moment ago and the cache has not shown it yet.
    Wait(Duration),
    /// The stored status says the same, transition times aside.
    Unchanged,
}

/// The status-write throttle of one replica: when it last wrote each link's status, and
/// the least time between two writes that change depths only. No clock of its own: the
/// caller passes `now`.
#[derive(Debug)]
pub struct StatusWriter {
    min_interval: Duration,
    written: Mutex<HashMap<LinkKey, Written>>,
}

impl StatusWriter {
    /// A writer that spaces depth-only writes of a link by `min_interval`.
    pub fn new(min_interval: Duration) -> StatusWriter {
        StatusWriter {
            min_interval,
            written: Mutex::default(),
        }
    }

    /// Whether the status of link `key`, stored as `old`, becomes `new` now.
    pub fn decide(
        &self,
        key: &LinkKey,
        old: Option<&IpcLinkStatus>,
        new: &IpcLinkStatus,
        now: Instant,
    ) -> Decision {
        if same_but_time(old, new) {
            return Decision::Unchanged;
        }
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let Some(last) = written.get(key) else {
            return Decision::Write;
        };
        let since = now.saturating_duration_since(last.at);
        // Depths alone change often: written at most once per interval per link.
        if only_depths_differ(old, new) && since < self.min_interval {
            return Decision::Wait(self.min_interval - since);
        }
        // A reconcile woken by an earlier event sees the link from before this
        // replica's own write: it waits for the cache instead of writing it again.
        if since < OWN_WRITE_SETTLE && last.fingerprint == fingerprint(new) {
            return Decision::Wait(OWN_WRITE_SETTLE - since);
        }
        Decision::Write
    }

    /// Records that `status` was written for `key` at `now`.
    pub fn wrote(&self, key: LinkKey, status: &IpcLinkStatus, now: Instant) {
        let written = Written {
            at: now,
            fingerprint: fingerprint(status),
        };
        let mut all = self.written.lock().unwrap_or_else(|p| p.into_inner());
        all.insert(key, written);
    }

    /// Forgets link `key` (deleted).
    pub fn forget(&self, key: &LinkKey) {
        let mut all = self.written.lock().unwrap_or_else(|p| p.into_inner());
        all.remove(key);
    }
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

    #[test]
    fn the_writer_writes_changes_spaces_depths_and_waits_for_its_own_write() {
        let key = LinkKey::new("ns", "link");
        let writer = StatusWriter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let stamp = |s: i64| {
            Some(Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH
                    + k8s_openapi::jiff::SignedDuration::from_secs(s),
            ))
        };
        let depths = |s: i64| IpcLinkStatus {
            depths_observed_time: stamp(s),
            ..IpcLinkStatus::default()
        };
        let ready = IpcLinkStatus {
            phase: Some(ipclink_core::model::spec::Phase::Ready),
            ..depths(1)
        };
        // Nothing written yet: a change is written; the same status is not.
        assert_eq!(
            writer.decide(&key, None, &depths(1), at(0)),
            Decision::Write
        );
        assert_eq!(
            writer.decide(&key, Some(&depths(1)), &depths(1), at(0)),
            Decision::Unchanged
        );
        writer.wrote(key.clone(), &depths(1), at(0));
        // Read back before the watch shows it: the same write waits for the cache.
        assert_eq!(
            writer.decide(&key, None, &depths(1), at(1)),
            Decision::Wait(Duration::from_secs(1))
        );
        // New depths within the interval wait; after it they are written.
        assert_eq!(
            writer.decide(&key, Some(&depths(1)), &depths(5), at(4)),
            Decision::Wait(Duration::from_secs(6))
        );
        assert_eq!(
            writer.decide(&key, Some(&depths(1)), &depths(5), at(10)),
            Decision::Write
        );
        // Any other change is written at once.
        assert_eq!(
            writer.decide(&key, Some(&depths(1)), &ready, at(4)),
            Decision::Write
        );
        // Forgotten (the link was deleted): nothing holds a new link of the name back.
        writer.forget(&key);
        assert_eq!(
            writer.decide(&key, Some(&depths(1)), &depths(5), at(4)),
            Decision::Write
        );
    }
}
