//! Flag groups the daemons share, flattened into each binary's command line, so a flag
//! means the same, with the same environment variable, in every binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::access::MetricsAuth;
use crate::http::CertSource;

/// How a daemon's metrics endpoint (`/metrics`, `/v1/links`) is protected, and where its
/// health probes are served.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs {
    /// Serve only /healthz and /readyz here, on connection slots of their own: point
    /// the kubelet's probes at it, so that no client of the metrics port can starve them.
    #[arg(long, env = "IPCLINK_PROBE_LISTEN")]
    pub probe_listen: Option<SocketAddr>,
    /// Who may read the metrics endpoint (/metrics, and /v1/links where it is served):
    /// `kubernetes` (HTTPS, and a bearer token the API server authenticates with a
    /// TokenReview and authorizes with a SubjectAccessReview for `get` on the path as a
    /// non-resource URL) or `none` (plain HTTP, only on a loopback address). [default:
    /// none on loopback, else kubernetes]
    #[arg(long, env = "IPCLINK_METRICS_AUTH", value_name = "kubernetes|none")]
    pub metrics_auth: Option<MetricsAuth>,
    /// The metrics endpoint's certificate chain (PEM) [default: a self-signed one made
    /// at start].
    #[arg(long, env = "IPCLINK_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// The key of --tls-cert-file (PEM).
    #[arg(long, env = "IPCLINK_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Also accept bearer tokens for the API server itself, besides those of the
    /// audience ipclink.dev/metrics: only for scrapers that cannot mount a projected
    /// token of that audience (such a token, sent here, could act on the API server).
    #[arg(long, env = "IPCLINK_METRICS_ACCEPT_API_AUDIENCE")]
    pub metrics_accept_api_audience: bool,
}

impl MetricsArgs {
    /// The certificate of --tls-cert-file and --tls-key-file, when both are given.
    pub fn cert_files(&self) -> Option<CertSource> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some(CertSource::Files(cert.clone(), key.clone())),
            _ => None,
        }
    }
}

/// The Tokio runtime of a daemon: multi-threaded, with `workers` worker threads (one
/// per core when `None`), timers and I/O enabled. Blocking work goes to its blocking
/// pool, so a few workers serve every call.
pub fn tokio_runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    builder.enable_all().build()
}

/// The long flags of `command`'s visible subcommands that no environment variable can
/// set, as `SUBCOMMAND --FLAG`, and how many flags were looked at: for each daemon's
/// test that every flag can come from the environment (as the chart and Compose files
/// set them).
pub fn flags_without_env(command: &clap::Command) -> (Vec<String>, usize) {
    let (mut missing, mut seen) = (Vec::new(), 0);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        for arg in sub.get_arguments() {
            seen += 1;
            if arg.get_long().is_some() && arg.get_env().is_none() && !arg.is_hide_set() {
                missing.push(format!("{} --{}", sub.get_name(), arg.get_id()));
            }
        }
    }
    (missing, seen)
}
