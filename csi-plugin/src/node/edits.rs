//! Edits of the links on this node, applied while members run: each link's record is
//! compared with its spec now and, where they differ, the link is made to serve the
//! spec by the rule of `ipclink_core::store::live`; what waits for the members to leave is
//! done once no publication uses the link (when the plugin charges member pods, by the
//! next publish, charged to the pod it publishes for).

use std::sync::Arc;

use super::NodePlugin;
use ipclink_core::LinkKey;

/// Allocates nothing: a region that would grow with no member pod's memory cgroup to
/// charge waits (an error names why; the next round tries again).
struct NoMember;

impl ipclink_core::Preallocate for NoMember {
    fn preallocate(
        &self,
        _file: std::os::fd::BorrowedFd<'_>,
        _size: u64,
    ) -> Result<(), ipclink_core::PreallocateError> {
        Err(ipclink_core::PreallocateError::Failed(
            "no member pod's memory cgroup is known to charge the grown region to; it grows once one is".into(),
        ))
    }
}

impl NodePlugin {
    /// Applies the current spec of every link on this node whose record differs from it
    /// or has pending changes. An invalid or deleted link is left as it serves. Returns
    /// the links changed.
    pub async fn apply_edits(self: &Arc<Self>) -> Vec<LinkKey> {
        let records = match self.blocking(|p| Ok(p.store.records().0)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the link records");
                return Vec::new();
            }
        };
        let mut applied = Vec::new();
        for record in records {
            let (namespace, name) = (record.plan.namespace.clone(), record.plan.name.clone());
            let (plan, serves) = match self.source.lookup(&namespace, &name, None).await {
                Ok(snapshot) => match snapshot.link(&namespace, &name) {
                    Ok((link, plan)) => (plan.clone(), super::has_server(link)),
                    Err(_) => continue,
                },
                Err(e) => {
                    tracing::warn!(namespace, link = name, error = %e, "cannot look the link up");
                    continue;
                }
            };
            // The spec just read says whether the link's servers may ask who calls.
            self.keep_peer_service(&namespace, &name, serves).await;
            let idle = !self.in_use(&namespace, &name);
            if plan == record.plan && (record.pending.is_empty() || !idle) {
                continue;
            }
            // A link no member uses has no member pod to charge what its edit makes:
            // the next publish applies the edit, charged to the pod it publishes for,
            // before that pod sees the link.
            if idle && matches!(self.settings.charge, super::Charge::FirstMember(_)) {
                continue;
            }
            let done = self
                .blocking(move |p| {
                    let slot = p.slot(&plan.namespace, &plan.name);
                    let mut materialized = slot.lock().unwrap_or_else(|e| e.into_inner());
                    // Torn down meanwhile: the next publish makes it from its spec.
                    if p.store.open_link(&plan.namespace, &plan.name).is_err() {
                        return Ok(false);
                    }
                    // A larger sizeLimit passes the node's budgets first, or waits.
                    let _reservation = match p.reserve_edit(&plan) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(namespace = %plan.namespace, link = %plan.name, error = %e, "an edit of the link waits");
                            return Ok(false);
                        }
                    };
                    let pod_uid = p.member_pod_uid(&plan.namespace, &plan.name);
                    // A region grows charged to a member pod's memory, never to this
                    // plugin's: with no member pod's cgroup to charge, growth fails
                    // and is tried again by the next round.
                    let alloc: Box<dyn ipclink_core::Preallocate> = match (&p.settings.charge, pod_uid.as_deref()) {
                        (super::Charge::FirstMember(_), None) => Box::new(NoMember),
                        (_, uid) => p.allocator(uid).unwrap_or_else(|_| Box::new(NoMember)),
                    };
                    let exclusive = !p.in_use(&plan.namespace, &plan.name);
                    let outcome = p.store.apply(&plan, &*alloc, exclusive)?;
                    outcome.log(&plan);
                    *materialized = outcome.pending.is_empty().then_some(plan);
                    Ok(true)
                })
                .await;
            match done {
                Ok(true) => applied.push(LinkKey::new(namespace, name)),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(namespace, link = name, error = %e, "cannot apply the link's edited spec")
                }
            }
        }
        applied
    }

    /// The uid of a pod the link is published to, whose memory a grown region is
    /// charged to, as the first member's is for a new one.
    fn member_pod_uid(&self, namespace: &str, name: &str) -> Option<String> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_target
            .values()
            .find(|p| p.namespace == namespace && p.link == name)
            .and_then(|p| p.pod_uid.clone())
    }
}
