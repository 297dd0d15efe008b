//! ipclink-csi: the CSI node and controller plugins for IpcLink volumes.

pub mod authority;
pub mod controller;
pub mod error;
pub mod grpc;
pub mod ids;
pub mod node;
pub mod source;
pub mod state;

use std::os::unix::fs::FileTypeExt;
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

/// The kubelet's plugin registration messages, from `proto/pluginregistration.proto`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod registration {
    tonic::include_proto!("pluginregistration");
}

/// Binds the control socket with mode 0600, replacing a stale socket (never another
/// kind of file) left by a previous run.
pub fn bind_socket(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} exists and is not a socket; not removed",
                path.display()
            )));
        }
        Err(_) => {}
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Created 0600 from the start: no moment in which others could connect.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = tokio::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    bound
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
