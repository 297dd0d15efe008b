//! The kubelet's plugin registration: the Registration service on
//! `DIR/csi.ipclink.dev-reg.sock`, telling the kubelet where the CSI socket is.

pub mod authority;

use std::path::Path;

use anyhow::Context;
use ipclink_core::model::names::DRIVER_NAME;
use ipclink_runtime::Shutdown;
use ipclink_runtime::unix::bind_unix;
use tonic::{Request, Response, Status};

/// The kubelet's plugin registration messages, from `proto/pluginregistration.proto`.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod proto {
    tonic::include_proto!("pluginregistration");
}

/// Serves the registration socket in `dir`, naming `endpoint` (the CSI socket as the
/// kubelet sees it), until shutdown.
pub fn spawn(dir: &Path, endpoint: String, shutdown: Shutdown) -> anyhow::Result<()> {
    use proto::registration_server::RegistrationServer;
    let socket = dir.join(format!("{DRIVER_NAME}-reg.sock"));
    let listener =
        bind_unix(&socket).with_context(|| format!("registration socket {}", socket.display()))?;
    tracing::info!(socket = %socket.display(), "serving kubelet plugin registration");
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(Registration { endpoint }))
            .serve_with_incoming_shutdown(
                // The kubelet sends the socket path as :authority; see authority.rs.
                tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    |conn| conn.map(authority::LocalAuthority::new),
                ),
                shutdown.signalled(),
            )
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "registration server failed");
        }
        let _ = std::fs::remove_file(&socket);
    });
    Ok(())
}

/// The kubelet plugin registration service of the node plugin.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The CSI socket path as the kubelet sees it.
    pub endpoint: String,
}

#[tonic::async_trait]
impl proto::registration_server::Registration for Registration {
    async fn get_info(
        &self,
        _: Request<proto::InfoRequest>,
    ) -> Result<Response<proto::PluginInfo>, Status> {
        tracing::info!(endpoint = %self.endpoint, "kubelet asked for plugin info");
        Ok(Response::new(proto::PluginInfo {
            r#type: "CSIPlugin".into(),
            name: DRIVER_NAME.into(),
            endpoint: self.endpoint.clone(),
            supported_versions: vec!["1.0.0".into()],
        }))
    }

    async fn notify_registration_status(
        &self,
        req: Request<proto::RegistrationStatus>,
    ) -> Result<Response<proto::RegistrationStatusResponse>, Status> {
        let status = req.into_inner();
        if status.plugin_registered {
            tracing::info!("registered with the kubelet");
        } else {
            tracing::error!(error = %status.error, "the kubelet refused the registration");
        }
        Ok(Response::new(proto::RegistrationStatusResponse {}))
    }
}
