//! Names users see outside the `IpcLink` type itself (DESIGN.md §3), defined once for the
//! CSI driver, the operator and the chart's tests.

/// The CSI driver name: `CSIDriver` object, inline volumes, StorageClass provisioner.
pub const DRIVER_NAME: &str = "csi.ipclink.dev";
/// The node topology key every node plugin reports, with the node's name as its value.
pub const TOPOLOGY_KEY: &str = "topology.ipclink.dev/node";
/// Label on the objects the operator makes for a link (claims, volumes); its value is
/// the link's name.
pub const LINK_LABEL: &str = "ipclink.dev/link";
