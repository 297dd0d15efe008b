//! The controller plugin: the Controller service over the link source.

use std::sync::Arc;

use super::{Exposed, Started, serve, spawn_endpoints};
use crate::cli::ControllerArgs;
use crate::controller::ControllerPlugin;
use crate::csi::controller_server::ControllerServer;
use crate::grpc::Controller;

/// Where the controller keeps its state: its volumes outlive reboots.
const STATE_DIR: &str = "/var/lib/ipclink-csi";

/// Runs the controller plugin until SIGTERM.
pub(super) async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let started = Started::new(&args.common, STATE_DIR, false).await?;
    let plugin = ControllerPlugin::new(&started.state_dir, started.source)?;
    let exposed = Exposed {
        registry: started.registry.clone(),
        node: None,
    };
    spawn_endpoints(
        &args.common,
        exposed,
        started.kube.clone(),
        &started.shutdown,
    )
    .await?;
    let router = tonic::transport::Server::builder()
        .add_service(started.identity)
        .add_service(ControllerServer::new(Controller {
            plugin: Arc::new(plugin),
            metrics: started.metrics,
        }));
    serve(
        router,
        &args.common.endpoint,
        started.socket,
        started.incoming,
        started.shutdown,
    )
    .await
}
