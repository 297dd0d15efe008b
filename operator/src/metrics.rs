//! What the operator shows on `--metrics-listen`: its reconcile families, the links by
//! phase (counted from the cache at each scrape), and the channel families it gathered
//! from the node plugins, each with its `node` label.

use ipclink_core::IpcLink;
use ipclink_core::metrics::{OperatorMetrics, SampleGroup, render, render_channel_groups};
use ipclink_core::spec::Phase;
use ipclink_runtime::links::Exposition;
use kube::runtime::reflector::Store;

use crate::depth::Samples;

/// The operator's exposition.
pub struct Exposed {
    /// Every family the operator registers.
    pub registry: prometheus::Registry,
    /// Its own families, to set `ipclink_links{phase}` before a scrape.
    pub metrics: OperatorMetrics,
    /// The link cache.
    pub links: Store<IpcLink>,
    /// The latest depths by node.
    pub samples: Samples,
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

impl Exposition for Exposed {
    fn metrics(&self, out: &mut String) {
        let state = self.links.state();
        for p in PHASES {
            let n = state
                .iter()
                .filter(|l| {
                    l.status
                        .as_ref()
                        .and_then(|s| s.phase)
                        .unwrap_or(Phase::Pending)
                        == p
                })
                .count();
            self.metrics
                .links
                .with_label_values(&[format!("{p:?}").as_str()])
                .set(n as i64);
        }
        render(&self.registry, out);
        let held = self
            .samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let labels: Vec<[(&str, &str); 1]> = held
            .iter()
            .map(|(node, _)| [("node", node.as_str())])
            .collect();
        let groups: Vec<SampleGroup<'_>> = held
            .iter()
            .zip(&labels)
            .map(|((_, s), l)| (&l[..], s.as_slice()))
            .collect();
        render_channel_groups(&groups, out);
    }
}
