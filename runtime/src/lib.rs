//! ipclink-runtime: what every ipclink process needs besides its own work — logging, one
//! shutdown watcher, an HTTP server with limits, a Unix control-socket binder, and the
//! endpoint that serves `/metrics`, `/v1/links`, `/healthz` and `/readyz`.
//!
//! It depends on `ipclink-core` only: no Docker client, no gRPC, no Kubernetes runtime.

pub mod access;
pub mod args;
pub mod client;
pub mod http;
pub mod links;
#[cfg(feature = "kube")]
pub mod metrics_tls;
pub mod shutdown;
pub mod tls;
pub mod unix;

pub use args::tokio_runtime;
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

/// Raises this process's soft limit on open files to its hard limit, as Go programs do
/// at start: a node process keeps a descriptor open per declared region and semaphore
/// it probes, and a low runtime default must not fail its gRPC and HTTP calls. Says
/// once in the log when it cannot.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open files limit");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open files limit"),
    }
}

#[cfg(test)]
mod tests {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};

    #[test]
    fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
        // One below the hard limit: other tests of this process keep their descriptors.
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        setrlimit(Resource::RLIMIT_NOFILE, hard - 1, hard).expect("lower");
        super::raise_open_files_limit();
        assert_eq!(
            getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit"),
            (hard, hard)
        );
    }
}
