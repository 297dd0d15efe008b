//! The gRPC services over the plugins. Every call goes through [`finish`], which counts
//! it by method and code, times it, and logs failures (otherwise only the CO sees them).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use ipclink_core::metrics::CsiMetrics;
use ipclink_core::model::names::DRIVER_NAME;
use tonic::{Code, Request, Response, Status};

use crate::controller::ControllerPlugin;
use crate::csi;
use crate::error::CsiError;
use crate::node::NodePlugin;

fn finish<T>(
    metrics: &CsiMetrics,
    method: &'static str,
    start: Instant,
    r: Result<T, CsiError>,
) -> Result<Response<T>, Status> {
    let code = match &r {
        Ok(_) => Code::Ok,
        Err(e) => e.code(),
    };
    metrics
        .requests
        .with_label_values(&[method, &format!("{code:?}")])
        .inc();
    metrics
        .duration
        .with_label_values(&[method])
        .observe(start.elapsed().as_secs_f64());
    match r {
        Ok(v) => {
            tracing::debug!(method, "ok");
            Ok(Response::new(v))
        }
        Err(e) => {
            tracing::warn!(method, code = ?code, error = %e, "call failed");
            Err(e.into())
        }
    }
}

/// Identity service.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Request metrics.
    pub metrics: CsiMetrics,
}

#[tonic::async_trait]
impl csi::identity_server::Identity for Identity {
    async fn get_plugin_info(
        &self,
        _: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        finish(
            &self.metrics,
            "GetPluginInfo",
            Instant::now(),
            Ok(csi::GetPluginInfoResponse {
                name: DRIVER_NAME.into(),
                vendor_version: env!("CARGO_PKG_VERSION").into(),
                manifest: HashMap::new(),
            }),
        )
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        use csi::plugin_capability::service::Type;
        let service = |t: Type| csi::PluginCapability {
            r#type: Some(csi::plugin_capability::Type::Service(
                csi::plugin_capability::Service { r#type: t as i32 },
            )),
        };
        // The driver as a whole has a controller (its own process in a cluster): say so
        // from both roles, as COs ask whichever endpoint they hold.
        let capabilities = vec![
            service(Type::ControllerService),
            service(Type::VolumeAccessibilityConstraints),
        ];
        finish(
            &self.metrics,
            "GetPluginCapabilities",
            Instant::now(),
            Ok(csi::GetPluginCapabilitiesResponse { capabilities }),
        )
    }

    async fn probe(
        &self,
        _: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        finish(
            &self.metrics,
            "Probe",
            Instant::now(),
            Ok(csi::ProbeResponse {
                ready: Some(csi::BoolValue { value: true }),
            }),
        )
    }
}

/// Node service.
#[derive(Debug, Clone)]
pub struct Node {
    /// The plugin.
    pub plugin: Arc<NodePlugin>,
    /// Request metrics.
    pub metrics: CsiMetrics,
}

#[tonic::async_trait]
impl csi::node_server::Node for Node {
    async fn node_publish_volume(
        &self,
        req: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let start = Instant::now();
        let r = self
            .plugin
            .publish(req.into_inner())
            .await
            .map(|()| csi::NodePublishVolumeResponse {});
        finish(&self.metrics, "NodePublishVolume", start, r)
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let start = Instant::now();
        let r = self
            .plugin
            .unpublish(req.into_inner())
            .await
            .map(|()| csi::NodeUnpublishVolumeResponse {});
        finish(&self.metrics, "NodeUnpublishVolume", start, r)
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        let start = Instant::now();
        let r = self
            .plugin
            .stats(req.into_inner())
            .await
            .map(|usage| csi::NodeGetVolumeStatsResponse { usage });
        finish(&self.metrics, "NodeGetVolumeStats", start, r)
    }

    async fn node_get_capabilities(
        &self,
        _: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        use csi::node_service_capability::rpc::Type;
        let capabilities = vec![csi::NodeServiceCapability {
            r#type: Some(csi::node_service_capability::Type::Rpc(
                csi::node_service_capability::Rpc {
                    r#type: Type::GetVolumeStats as i32,
                },
            )),
        }];
        finish(
            &self.metrics,
            "NodeGetCapabilities",
            Instant::now(),
            Ok(csi::NodeGetCapabilitiesResponse { capabilities }),
        )
    }

    async fn node_get_info(
        &self,
        _: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        finish(
            &self.metrics,
            "NodeGetInfo",
            Instant::now(),
            Ok(self.plugin.info()),
        )
    }
}

/// Controller service.
#[derive(Debug, Clone)]
pub struct Controller {
    /// The plugin.
    pub plugin: Arc<ControllerPlugin>,
    /// Request metrics.
    pub metrics: CsiMetrics,
}

#[tonic::async_trait]
impl csi::controller_server::Controller for Controller {
    async fn create_volume(
        &self,
        req: Request<csi::CreateVolumeRequest>,
    ) -> Result<Response<csi::CreateVolumeResponse>, Status> {
        let start = Instant::now();
        let r = self
            .plugin
            .create(req.into_inner())
            .await
            .map(|v| csi::CreateVolumeResponse { volume: Some(v) });
        finish(&self.metrics, "CreateVolume", start, r)
    }

    async fn delete_volume(
        &self,
        req: Request<csi::DeleteVolumeRequest>,
    ) -> Result<Response<csi::DeleteVolumeResponse>, Status> {
        let start = Instant::now();
        let r = self
            .plugin
            .delete(req.into_inner().volume_id)
            .await
            .map(|()| csi::DeleteVolumeResponse {});
        finish(&self.metrics, "DeleteVolume", start, r)
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<csi::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<csi::ValidateVolumeCapabilitiesResponse>, Status> {
        let start = Instant::now();
        let r = self.plugin.validate(req.into_inner());
        finish(&self.metrics, "ValidateVolumeCapabilities", start, r)
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
        use csi::controller_service_capability::rpc::Type;
        let capabilities = vec![csi::ControllerServiceCapability {
            r#type: Some(csi::controller_service_capability::Type::Rpc(
                csi::controller_service_capability::Rpc {
                    r#type: Type::CreateDeleteVolume as i32,
                },
            )),
        }];
        finish(
            &self.metrics,
            "ControllerGetCapabilities",
            Instant::now(),
            Ok(csi::ControllerGetCapabilitiesResponse { capabilities }),
        )
    }
}
