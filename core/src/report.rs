//! The `/v1/links` body: what every ipclink process that holds links reports about them
//! (the sidecar, the volume plugin, the CSI node plugin), and what the operator gathers.

use serde::{Deserialize, Serialize};

use crate::probe::LinkSample;

/// Body of `/v1/links`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinksReport {
    /// Every link, in (namespace, name) order.
    pub links: Vec<LinkSample>,
    /// Containers found mounting the links (Compose discovery), with their problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberReport>,
}

/// One container that mounts a link (Compose discovery).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberReport {
    /// The link's namespace.
    pub namespace: String,
    /// The link's name.
    pub link: String,
    /// Compose service name (the member name), or the container name outside Compose.
    pub service: String,
    /// Container name.
    pub container: String,
    /// The user it runs as, as the engine reports it ("" is the image's default, root).
    pub user: String,
    /// The container's state (running, exited, paused, ...).
    pub state: String,
    /// Whether its permissions could be checked (a numeric user).
    pub checked: bool,
    /// What it cannot do, one line per object, naming service and channel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Channels it cannot use as declared, with the missing access (for metrics).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied: Vec<(String, String)>,
}
