//! The node's budgets: publications at once (`--max-volumes-per-node`), bytes and
//! objects of all links (`--max-node-bytes`, `--max-node-objects`) and the largest link
//! (`--max-link-bytes`), counted before anything is made.

use std::collections::HashMap;
use std::sync::Mutex;

use ipclink_core::{LinkKey, LinkPlan};

use super::NodePlugin;
use crate::error::CsiError;

/// Ends a publication's count as one being made.
pub(super) struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Ends a link's reservation against the node budget.
pub(crate) struct Reservation<'a>(&'a Mutex<Reserved>, LinkKey);

/// The `sizeLimit` and declared objects of each link being made now, by namespace and
/// name.
pub(super) type Reserved = HashMap<LinkKey, (u64, usize)>;

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.1);
    }
}

impl NodePlugin {
    /// For an edit of a live link to `plan`: counts a larger `sizeLimit` against the
    /// budgets as [`NodePlugin::reserve`] does for a new link. Over a budget, the edit is
    /// held back: the link keeps serving its record's plan, and its record says what
    /// waits, naming `spec.sizeLimit` (the operator shows it in SpecApplied); the error
    /// says why.
    pub(crate) fn reserve_edit(
        &self,
        plan: &LinkPlan,
    ) -> Result<Option<Reservation<'_>>, CsiError> {
        let Some(record) = self.store.record(&plan.namespace, &plan.name) else {
            return Ok(None);
        };
        let grows = plan.size_limit > record.plan.size_limit;
        let adds = plan.objects.len() > record.plan.objects.len();
        if !grows && !adds {
            return Ok(None);
        }
        match self.reserve(plan) {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                let objects_past = e.to_string().contains("--max-node-objects");
                let problem = if grows && !objects_past {
                    ipclink_core::Problem::new(
                        "spec.sizeLimit",
                        format!("{e}; the link keeps its size until the edit fits"),
                    )
                } else {
                    ipclink_core::Problem::new(
                        "spec.channels",
                        format!("{e}; the link keeps its objects until the edit fits"),
                    )
                };
                self.store.hold_back(plan, &[problem])?;
                Err(e)
            }
        }
    }

    /// Counts a publication being made against `--max-volumes-per-node`, or refuses it
    /// when the node holds that many: every publication is a mount on the node, and
    /// the node's mount table is shared with the kubelet and every other driver.
    pub(super) fn count_publication(&self) -> Result<InFlight<'_>, CsiError> {
        use std::sync::atomic::Ordering;
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let held = state.by_target.len() + self.in_flight.load(Ordering::SeqCst);
        let max = self.settings.max_volumes;
        if max > 0 && held as i64 >= max {
            return Err(CsiError::Exhausted(format!(
                "this node holds {held} ipclink publications and takes at most {max} (--max-volumes-per-node)"
            )));
        }
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Ok(InFlight(&self.in_flight))
    }

    /// Counts a link about to be made against the budgets of this node; the reservation
    /// ends when the returned guard is dropped (by then the link's record counts).
    pub(super) fn reserve(&self, plan: &LinkPlan) -> Result<Reservation<'_>, CsiError> {
        use ipclink_core::model::quantity::format_bytes;
        let (key, size) = (plan.key(), plan.size_limit);
        let s = &self.settings;
        if s.max_link_bytes > 0 && size > s.max_link_bytes {
            return Err(CsiError::Exhausted(format!(
                "link {key} has sizeLimit {}; this node takes links of at most {} (--max-link-bytes)",
                format_bytes(size),
                format_bytes(s.max_link_bytes)
            )));
        }
        let mut reserved = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        // What the other links on this node hold or are being made with.
        let (records, _) = self.store.records();
        let others: Vec<(u64, usize)> = records
            .iter()
            .filter(|r| r.plan.key() != key)
            .map(|r| (r.plan.size_limit, r.plan.objects.len()))
            .chain(reserved.iter().filter(|(k, _)| **k != key).map(|(_, v)| *v))
            .collect();
        if s.max_node_bytes > 0 {
            let in_use: u64 = others.iter().map(|o| o.0).sum();
            if in_use.saturating_add(size) > s.max_node_bytes {
                return Err(CsiError::Exhausted(format!(
                    "link {key} (sizeLimit {}) does not fit this node's budget: {} links hold {} of {} (--max-node-bytes)",
                    format_bytes(size),
                    others.len(),
                    format_bytes(in_use),
                    format_bytes(s.max_node_bytes)
                )));
            }
        }
        let objects = plan.objects.len();
        if s.max_node_objects > 0 {
            let in_use: usize = others.iter().map(|o| o.1).sum();
            if in_use.saturating_add(objects) > s.max_node_objects {
                return Err(CsiError::Exhausted(format!(
                    "link {key} ({objects} channels and semaphores) does not fit this node's budget: {} links declare {in_use} of {} (--max-node-objects)",
                    others.len(),
                    s.max_node_objects
                )));
            }
        }
        reserved.insert(key.clone(), (size, objects));
        Ok(Reservation(&self.reserved, key))
    }
}
