//! NodeGetVolumeStats: bytes and inodes of a published link's tmpfs.

use std::sync::Arc;

use nix::sys::statvfs::statvfs;

use super::{NodePlugin, errno};
use crate::csi;
use crate::error::CsiError;
use crate::ids::check_id;

impl NodePlugin {
    /// NodeGetVolumeStats: bytes and inodes of the link's tmpfs.
    pub async fn stats(
        self: &Arc<Self>,
        req: csi::NodeGetVolumeStatsRequest,
    ) -> Result<Vec<csi::VolumeUsage>, CsiError> {
        check_id("volume_id", &req.volume_id)?;
        if req.volume_path.is_empty() {
            return Err(CsiError::invalid("volume_path", "is required"));
        }
        let at_path = self.publication(&req.volume_path);
        if at_path.is_none_or(|p| p.volume_id != req.volume_id) {
            let anywhere = self
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .by_target
                .values()
                .any(|p| p.volume_id == req.volume_id);
            return Err(CsiError::NotFound(if anywhere {
                format!(
                    "volume {} is not published at {}",
                    req.volume_id, req.volume_path
                )
            } else {
                format!("volume {} is not published on this node", req.volume_id)
            }));
        }
        let path = req.volume_path;
        let v = crate::blocking(move || statvfs(path.as_str()).map_err(|e| errno("statvfs", e)))
            .await?;
        let f = v.fragment_size();
        let usage =
            |unit: csi::volume_usage::Unit, total: u64, free: u64, avail: u64| csi::VolumeUsage {
                total: total as i64,
                available: avail as i64,
                used: total.saturating_sub(free) as i64,
                unit: unit as i32,
            };
        Ok(vec![
            usage(
                csi::volume_usage::Unit::Bytes,
                v.blocks() * f,
                v.blocks_free() * f,
                v.blocks_available() * f,
            ),
            usage(
                csi::volume_usage::Unit::Inodes,
                v.files(),
                v.files_free(),
                v.files_available(),
            ),
        ])
    }
}
