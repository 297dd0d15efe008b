//! What every reconcile shares (the client, the caches, the status-write bookkeeping),
//! its settings, and why a reconcile fails.

use std::sync::Arc;
use std::time::Duration;

use ipclink_core::metrics::OperatorMetrics;
use ipclink_core::{IpcLink, LinkKey};
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

/// Why one reconcile failed (it is retried with backoff): one variant per operation,
/// each naming the link (or StorageClass) it was for.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Patching `status` failed.
    #[error("cannot write the status of link {link}: {source}")]
    WriteStatus {
        /// The link.
        link: LinkKey,
        /// The client's error.
        source: kube::Error,
    },
    /// Adding the finalizer failed.
    #[error("cannot add the finalizer to link {link}: {source}")]
    AddFinalizer {
        /// The link.
        link: LinkKey,
        /// The client's error.
        source: kube::Error,
    },
    /// Removing the finalizer failed.
    #[error("cannot remove the finalizer of link {link}: {source}")]
    RemoveFinalizer {
        /// The link.
        link: LinkKey,
        /// The client's error.
        source: kube::Error,
    },
    /// Reading the node Lease a node plugin holds for the link failed.
    #[error("cannot read the node Lease of link {link}: {source}")]
    ReadLease {
        /// The link.
        link: LinkKey,
        /// The client's error.
        source: kube::Error,
    },
    /// Reading a persistent link's claim (its PVC) failed.
    #[error("cannot read the claim of link {link}: {source}")]
    ReadClaim {
        /// The link.
        link: LinkKey,
        /// The client's error.
        source: kube::Error,
    },
    /// Creating a persistent link's claim failed.
    #[error("cannot create the claim of link {link}: {source}")]
    CreateClaim {
        /// The link.
        link: LinkKey,
        /// The client's error.
        source: kube::Error,
    },
    /// Deleting a link's claim (at cleanup or to re-home it) failed.
    #[error("cannot delete the claim of link {link}: {source}")]
    DeleteClaim {
        /// The link.
        link: LinkKey,
        /// The client's error.
        source: kube::Error,
    },
    /// Reading the StorageClass a claim names failed.
    #[error("cannot read StorageClass {class}: {source}")]
    ReadStorageClass {
        /// The class.
        class: String,
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
    /// The API client's error, when an API call failed.
    fn api(&self) -> Option<&kube::Error> {
        match self {
            Error::WriteStatus { source, .. }
            | Error::AddFinalizer { source, .. }
            | Error::RemoveFinalizer { source, .. }
            | Error::ReadLease { source, .. }
            | Error::ReadClaim { source, .. }
            | Error::CreateClaim { source, .. }
            | Error::DeleteClaim { source, .. }
            | Error::ReadStorageClass { source, .. } => Some(source),
            Error::Encode { .. } => None,
        }
    }

    /// A constant category of the error: the `error` label of
    /// `ipclink_reconcile_errors_total` (never a formatted payload, so the family's
    /// cardinality stays fixed).
    pub fn metric_label(&self) -> &'static str {
        match self.api() {
            Some(kube::Error::Api(s)) => match s.code {
                403 => "forbidden",
                404 => "not_found",
                409 => "conflict",
                422 => "invalid",
                429 => "throttled",
                c if c >= 500 => "apiserver",
                _ => "api",
            },
            Some(kube::Error::HyperError(_) | kube::Error::Service(_)) => "connection",
            Some(kube::Error::SerdeError(_)) | None => "serialization",
            Some(_) => "client",
        }
    }
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
        Error::ReadClaim {
            link: LinkKey::new("ns", "link"),
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
