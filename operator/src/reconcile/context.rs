//! What every reconcile shares (the client, the caches, the status-write bookkeeping),
//! its settings, and why a reconcile fails.

use std::sync::Arc;
use std::time::Duration;

use ipclink_core::IpcLink;
use ipclink_core::metrics::OperatorMetrics;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;

use crate::cache::podcache::PodIndex;
pub use crate::gather::Depths;
use crate::metrics::Synced;
use crate::reconcile::status::StatusWriter;

/// Shared by every reconcile.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Every pod, from one watch, by namespace and label.
    pub pods: Arc<PodIndex>,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Reconcile counters.
    pub metrics: OperatorMetrics,
    /// Depths to fold into status.
    pub depths: Depths,
    /// How often a Ready link is looked at again without a change.
    pub resync: Duration,
    /// The Leases node plugins take of inline links (labelled with the link).
    pub leases: Store<Lease>,
    /// Set once `leases` holds the watch's first list.
    pub leases_listed: Arc<std::sync::atomic::AtomicBool>,
    /// Every Node, from one watch (name and conditions only).
    pub nodes: Store<Node>,
    /// Set once `nodes` holds the watch's first list.
    pub nodes_listed: Arc<std::sync::atomic::AtomicBool>,
    /// How long a persistent link's node may be NotReady before the link is re-homed;
    /// `None`: never re-home.
    pub rehome_after: Option<Duration>,
    /// Whether a planned status is written, and when.
    pub status: StatusWriter,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// Why one reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("{what}: {source}")]
    Kube {
        /// What was attempted.
        what: String,
        /// The client's error.
        source: kube::Error,
    },
    /// A status or patch could not be encoded as JSON.
    #[error("{what}: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The encoder's error.
        source: serde_json::Error,
    },
}

impl Error {
    /// A constant category of the error: the `error` label of
    /// `ipclink_reconcile_errors_total` (never a formatted payload, so the family's
    /// cardinality stays fixed).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { source, .. } => match source {
                kube::Error::Api(s) => match s.code {
                    403 => "forbidden",
                    404 => "not_found",
                    409 => "conflict",
                    422 => "invalid",
                    429 => "throttled",
                    c if c >= 500 => "apiserver",
                    _ => "api",
                },
                kube::Error::HyperError(_) | kube::Error::Service(_) => "connection",
                kube::Error::SerdeError(_) => "serialization",
                _ => "client",
            },
            Error::Encode { .. } => "serialization",
        }
    }
}

pub(crate) fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

pub(crate) fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Settings of [`run`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// How many links are reconciled at once.
    pub concurrency: u16,
    /// Resync of a link without changes.
    pub resync: Duration,
    /// Name this operator reports in Events.
    pub instance: String,
    /// See [`Context::status_min_interval`].
    pub status_min_interval: Duration,
    /// See [`Context::rehome_after`].
    pub rehome_after: Option<Duration>,
}

/// Everything the controller shares with the rest of the process.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The link cache (for `ipclink_links{phase}`).
    pub links: Store<IpcLink>,
    /// Depths gathered from node plugins.
    pub depths: Depths,
    /// Whether the caches a reconcile reads hold their first list.
    pub synced: Synced,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> Error {
        Error::Kube {
            what: format!("a call answered {code}"),
            source: kube::Error::Api(
                kube::core::Status::failure("x", "y")
                    .with_code(code)
                    .boxed(),
            ),
        }
    }

    #[test]
    fn errors_have_constant_metric_labels() {
        for (code, label) in [
            (403, "forbidden"),
            (404, "not_found"),
            (409, "conflict"),
            (422, "invalid"),
            (429, "throttled"),
            (500, "apiserver"),
            (503, "apiserver"),
            (400, "api"),
        ] {
            assert_eq!(api(code).metric_label(), label, "{code}");
        }
        let parse = serde_json::from_str::<u8>("x").expect_err("not a number");
        let e = Error::Encode {
            what: "encode the status",
            source: parse,
        };
        assert_eq!(e.metric_label(), "serialization");
    }
}
