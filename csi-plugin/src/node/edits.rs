//! Edits of the links on this node, applied while members run: each link's record is
//! compared with its spec now and, where they differ, the link is made to serve the
//! spec by the rule of `ipclink_core::live`; what waits for the members to leave is
//! done once no publication uses the link.

use std::sync::Arc;

use super::NodePlugin;

impl NodePlugin {
    /// Applies the current spec of every link on this node whose record differs from it
    /// or has pending changes. An invalid or deleted link is left as it serves. Returns
    /// the links changed.
    pub async fn apply_edits(self: &Arc<Self>) -> Vec<(String, String)> {
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
            let plan = match self.source.lookup(&namespace, &name, None).await {
                Ok(snapshot) => match snapshot.link(&namespace, &name) {
                    Ok((_, plan)) => plan.clone(),
                    Err(_) => continue,
                },
                Err(e) => {
                    tracing::warn!(namespace, link = name, error = %e, "cannot look the link up");
                    continue;
                }
            };
            let idle = !self.in_use(&namespace, &name);
            if plan == record.plan && (record.pending.is_empty() || !idle) {
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
                    let pod_uid = p.member_pod_uid(&plan.namespace, &plan.name);
                    // The pod may be gone meanwhile: then the plugin holds the pages.
                    let alloc = p
                        .allocator(pod_uid.as_deref())
                        .unwrap_or_else(|_| Box::new(ipclink_core::InProcess));
                    let exclusive = !p.in_use(&plan.namespace, &plan.name);
                    let outcome = p.store.apply(&plan, &*alloc, exclusive)?;
                    outcome.log(&plan);
                    *materialized = outcome.pending.is_empty().then_some(plan);
                    Ok(true)
                })
                .await;
            match done {
                Ok(true) => applied.push((namespace, name)),
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
