//! ipclink-runtime: what every ipclink process needs besides its own work — logging, one
//! shutdown watcher, an HTTP server with limits, a Unix control-socket binder, and the
//! endpoint that serves `/metrics`, `/v1/links`, `/healthz` and `/readyz`.
//!
//! It depends on `ipclink-core` only: no Docker client, no gRPC, no Kubernetes runtime.

pub mod access;
pub mod client;
pub mod http;
pub mod links;
#[cfg(feature = "kube")]
pub mod metrics_tls;
pub mod shutdown;
pub mod tls;
pub mod unix;

pub use shutdown::Shutdown;

/// Logs to stderr, filtered by `IPCLINK_LOG` (default `info`), in colour only on a
/// terminal; the same for every ipclink binary.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IPCLINK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
