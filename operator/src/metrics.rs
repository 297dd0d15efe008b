//! What the operator shows on `--metrics-listen`: its reconcile families, the links by
//! phase and `ipclink_link_info` (one series per link, for alerts to name the link and
//! its node), both computed from the cache at each scrape. The channel families are the
//! node plugins' own: Prometheus scrapes them there (the chart's PodMonitor), so the
//! operator does not export them a second time.
//!
//! A standby replica (leader election) has no link cache: it leaves the link families
//! out rather than report no links, and serves its own process families only.

use ipclink_core::IpcLink;
use ipclink_core::metrics::{OperatorMetrics, render, render_gauge};
use ipclink_core::model::spec::Phase;
use ipclink_runtime::links::{Exposition, NotReady};
use kube::ResourceExt;
use kube::runtime::reflector::Store;

use std::sync::Arc;

use crate::cache::podcache::PodIndex;

/// The operator's exposition.
pub struct Exposed {
    /// Every family the operator registers.
    pub registry: prometheus::Registry,
    /// Its own families, to set `ipclink_links{phase}` before a scrape.
    pub metrics: OperatorMetrics,
    /// The link cache, set once this replica leads.
    pub links: std::sync::OnceLock<Store<IpcLink>>,
    /// The leader's caches, set once this replica leads: not ready before their first
    /// list.
    pub synced: std::sync::OnceLock<Synced>,
}

impl std::fmt::Debug for Exposed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exposed").finish_non_exhaustive()
    }
}

const PHASES: [Phase; 5] = [
    Phase::Pending,
    Phase::Ready,
    Phase::Degraded,
    Phase::Invalid,
    Phase::Terminating,
];

/// A link's phase as its status shows it (Pending before the first status).
fn phase(link: &IpcLink) -> Phase {
    link.status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(Phase::Pending)
}

impl Exposition for Exposed {
    /// A standby is ready (it serves metrics and health); a leader once it has read
    /// what its reconciles judge by.
    fn ready(&self) -> Result<(), NotReady> {
        let Some(synced) = self.synced.get() else {
            return Ok(());
        };
        let missing = synced.missing();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(NotReady::NotListed(missing))
        }
    }

    fn metrics(&self, out: &mut String) {
        let Some(links) = self.links.get() else {
            render(&self.registry, out);
            return;
        };
        let state = links.state();
        for p in PHASES {
            let n = state.iter().filter(|l| phase(l) == p).count();
            self.metrics
                .links
                .with_label_values(&[format!("{p:?}").as_str()])
                .set(n as i64);
        }
        render(&self.registry, out);
        let rows: Vec<(String, String, String, String)> = state
            .iter()
            .map(|l| {
                (
                    l.namespace().unwrap_or_default(),
                    l.name_any(),
                    format!("{:?}", phase(l)),
                    l.status
                        .as_ref()
                        .and_then(|s| s.node.clone())
                        .unwrap_or_default(),
                )
            })
            .collect();
        let rows: Vec<(Vec<(&str, &str)>, u64)> = rows
            .iter()
            .map(|(ns, name, phase, node)| {
                (
                    vec![
                        ("namespace", ns.as_str()),
                        ("link", name.as_str()),
                        ("phase", phase.as_str()),
                        ("node", node.as_str()),
                    ],
                    1,
                )
            })
            .collect();
        render_gauge(
            out,
            "ipclink_link_info",
            "One series per IpcLink: its phase and the node it lives on (empty until its members are scheduled); always 1.",
            &rows,
        );
    }
}

/// Whether the caches a reconcile reads hold their first list: a leader that has not
/// read them yet is not ready (`/readyz`).
#[derive(Debug, Clone)]
pub struct Synced {
    pub(crate) links: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) pods: Arc<PodIndex>,
    pub(crate) nodes: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) leases: Arc<std::sync::atomic::AtomicBool>,
}

impl Synced {
    /// The caches still waiting for their first list, by resource.
    pub fn missing(&self) -> Vec<&'static str> {
        let listed =
            |f: &std::sync::atomic::AtomicBool| f.load(std::sync::atomic::Ordering::Acquire);
        [
            ("ipclinks", listed(&self.links)),
            ("pods", self.pods.listed()),
            ("nodes", listed(&self.nodes)),
            ("leases", listed(&self.leases)),
        ]
        .into_iter()
        .filter(|(_, done)| !done)
        .map(|(what, _)| what)
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    #[test]
    fn a_leader_is_ready_once_every_cache_has_listed() {
        use ipclink_runtime::links::Exposition;
        use std::sync::atomic::{AtomicBool, Ordering};
        let flag = || Arc::new(AtomicBool::new(false));
        let synced = Synced {
            links: flag(),
            pods: Arc::new(PodIndex::new()),
            nodes: flag(),
            leases: flag(),
        };
        let registry = prometheus::Registry::new();
        let exposed = crate::metrics::Exposed {
            metrics: OperatorMetrics::new(&registry).expect("metrics"),
            registry,
            links: std::sync::OnceLock::new(),
            synced: std::sync::OnceLock::new(),
        };
        assert_eq!(exposed.ready(), Ok(()), "a standby is ready");
        exposed.synced.set(synced.clone()).expect("set once");
        assert_eq!(
            exposed.ready(),
            Err(NotReady::NotListed(vec![
                "ipclinks", "pods", "nodes", "leases"
            ]))
        );
        synced.links.store(true, Ordering::Release);
        synced.nodes.store(true, Ordering::Release);
        synced.leases.store(true, Ordering::Release);
        assert_eq!(synced.missing(), ["pods"]);
        synced
            .pods
            .apply(&kube::runtime::watcher::Event::<Pod>::InitDone);
        assert_eq!(synced.missing(), Vec::<&str>::new());
        assert_eq!(exposed.ready(), Ok(()));
    }
}
