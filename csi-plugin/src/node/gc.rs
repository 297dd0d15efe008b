//! Teardown of links no publication uses: deleted links (their last unpublish kept them
//! while they still existed) and inline links unused past `--unused-link-grace-seconds`.

use std::sync::Arc;

use super::NodePlugin;
use crate::error::CsiError;
use crate::source::LinkSource;
use ipclink_core::LinkKey;

impl NodePlugin {
    /// Tears link `namespace/name` down when no publication uses it and it no longer
    /// exists; `Ok(true)` when it was torn down.
    pub(super) async fn teardown_if_deleted(
        self: &Arc<Self>,
        namespace: &str,
        name: &str,
    ) -> Result<bool, CsiError> {
        if self.in_use(namespace, name)
            || self
                .source
                .lookup(namespace, name, None)
                .await?
                .has_link(namespace, name)
        {
            return Ok(false);
        }
        self.teardown_unused(namespace, name).await
    }

    /// Tears link `namespace/name` down unless a publication uses it; `Ok(true)` when
    /// it was torn down.
    async fn teardown_unused(
        self: &Arc<Self>,
        namespace: &str,
        name: &str,
    ) -> Result<bool, CsiError> {
        if self.in_use(namespace, name) {
            return Ok(false);
        }
        // Its socket and calls hold the tmpfs: closed before it goes (a publish that
        // comes in meanwhile starts it again).
        self.stop_peer_service(&LinkKey::new(namespace, name)).await;
        let (namespace, name) = (namespace.to_owned(), name.to_owned());
        self.blocking(move |p| {
            // Publishes hold this lock from materializing to recording: a publish that
            // came in since the caller looked is seen here.
            let slot = p.slot(&namespace, &name);
            let mut materialized = slot.lock().unwrap_or_else(|p| p.into_inner());
            if p.in_use(&namespace, &name) {
                return Ok(false);
            }
            p.store.teardown(&namespace, &name)?;
            *materialized = None;
            Ok(true)
        })
        .await
    }

    /// Tears an inline link down, and releases its claim, once no publication has used
    /// it for `unused_grace`: its next members may then start on any node. `Ok(true)`
    /// when it was torn down.
    async fn teardown_if_unused(
        self: &Arc<Self>,
        namespace: &str,
        name: &str,
    ) -> Result<bool, CsiError> {
        let Some(grace) = self.settings.unused_grace else {
            return Ok(false);
        };
        let LinkSource::Kube(kube) = &self.source else {
            return Ok(false);
        };
        let key = LinkKey::new(namespace, name);
        let since = {
            let mut idle = self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
            if self.in_use(namespace, name) {
                idle.remove(&key);
                return Ok(false);
            }
            *idle
                .entry(key.clone())
                .or_insert_with(std::time::Instant::now)
        };
        if since.elapsed() < grace {
            return Ok(false);
        }
        // Persistent links stay: their volume pins the members to this node.
        let snapshot = self.source.lookup(namespace, name, None).await?;
        if let Ok((link, _)) = snapshot.link(namespace, name)
            && link.spec.claim.is_some()
        {
            return Ok(false);
        }
        let torn = self.teardown_unused(namespace, name).await?;
        if torn {
            self.idle_since
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            kube.release(namespace, name, &self.node_id).await?;
            tracing::info!(
                namespace,
                link = name,
                unused_seconds = since.elapsed().as_secs(),
                "link unused past --unused-link-grace-seconds: torn down and its claim released (its data is gone; its next members may start on any node)"
            );
        }
        Ok(torn)
    }

    /// Tears down the links that no publication uses and that no longer exist: a link
    /// deleted after its last member left (its last unpublish kept it, as it still
    /// existed then). Returns the links removed.
    pub async fn collect_garbage(self: &Arc<Self>) -> Vec<LinkKey> {
        let records = match self.blocking(|p| Ok(p.store.records().0)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the link records");
                return Vec::new();
            }
        };
        let mut removed = Vec::new();
        for plan in records.into_iter().map(|r| r.plan) {
            let (namespace, link) = (plan.namespace.as_str(), plan.name.as_str());
            match self.teardown_if_deleted(namespace, link).await {
                Ok(true) => {
                    tracing::info!(namespace, link, "deleted link torn down");
                    removed.push(plan.key());
                }
                Ok(false) => match self.teardown_if_unused(namespace, link).await {
                    Ok(true) => removed.push(plan.key()),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(namespace, link, error = %e, "cannot free an unused link")
                    }
                },
                Err(e) => {
                    tracing::warn!(namespace, link, error = %e, "cannot collect an unused link")
                }
            }
        }
        removed
    }
}
