//! ipclink-csi: the CSI node and controller plugins for IpcLink volumes.

pub mod cli;
pub mod controller;
pub mod error;
pub mod grpc;
pub mod ids;
pub mod node;
pub mod registration;
pub mod serve;
pub mod source;
pub mod state;

use std::path::Path;

/// Messages and services generated from `proto/csi.proto`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod csi {
    tonic::include_proto!("csi.v1");
}

/// Runs blocking work (mounts, `fallocate`, state files, directory reads) on Tokio's
/// blocking pool, so the gRPC workers only ever wait on futures.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, error::CsiError> + Send + 'static,
) -> Result<T, error::CsiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| error::CsiError::Internal(format!("blocking task failed: {e}")))?
}

/// A gRPC channel to a plugin's Unix socket (for tests, benchmarks and tools).
pub async fn connect(socket: &Path) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = socket.to_path_buf();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}
