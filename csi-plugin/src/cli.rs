//! Command line of `ipclink-csi`: one binary, a subcommand per role.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use ipclink_runtime::args::MetricsArgs;

/// The ipclink CSI driver (csi.ipclink.dev).
#[derive(Debug, Parser)]
#[command(name = "ipclink-csi", version, about)]
pub struct Cli {
    /// Which plugin to run.
    #[command(subcommand)]
    pub role: Role,
}

/// The two plugins.
#[derive(Debug, Subcommand)]
pub enum Role {
    /// Node plugin: Identity and Node services.
    Node(NodeArgs),
    /// (Internal) Allocates a new region from inside a pod's memory cgroup; started by
    /// the node plugin.
    #[command(hide = true)]
    Charge(ChargeArgs),
    /// Controller plugin: Identity and Controller services.
    Controller(ControllerArgs),
}

/// Flags of the node plugin.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Flags both roles take.
    #[command(flatten)]
    pub common: Common,
    /// This node's name (`spec.nodeName`: a DNS subdomain of up to 253 characters);
    /// the value of topology.ipclink.dev/node is its short form (at most 63).
    #[arg(long, env = "NODE_ID", value_parser = node_name)]
    pub node_id: String,
    /// The kubelet's plugin registration directory (e.g. /var/lib/kubelet/plugins_registry);
    /// when set, the registration socket csi.ipclink.dev-reg.sock is served there.
    #[arg(long, env = "IPCLINK_REGISTRATION_DIR")]
    pub registration_dir: Option<PathBuf>,
    /// The CSI socket path as the kubelet sees it [default: the --endpoint path].
    #[arg(long, env = "IPCLINK_KUBELET_ENDPOINT")]
    pub kubelet_endpoint: Option<String>,
    /// Seconds between two looks for links that were deleted after their last
    /// member unmounted them (their tmpfs is then removed); 0 never looks.
    #[arg(long, env = "IPCLINK_GC_INTERVAL_SECONDS", default_value_t = 30)]
    pub gc_interval_seconds: u64,
    /// Seconds between two looks for edited specs of the links on this node (one GET
    /// per link held here): what can change under running members is applied then,
    /// the rest when the link has none (a publish applies the spec too); 0 leaves
    /// edits to the next publish.
    #[arg(long, env = "IPCLINK_APPLY_INTERVAL_SECONDS", default_value_t = 30)]
    pub apply_interval_seconds: u64,
    /// Seconds an inline link (no `spec.claim`) may stay on this node with no member
    /// mounting it before its tmpfs is removed and its Lease released, so its next
    /// members may start on another node (its data is then gone); 0 keeps it while
    /// the link exists.
    #[arg(long, env = "IPCLINK_UNUSED_LINK_GRACE_SECONDS", default_value_t = 0)]
    pub unused_link_grace_seconds: u64,
    /// Whose memory a link's preallocated shm pages count against: `pod` (the first
    /// member pod's memory cgroup, as an emptyDir of medium Memory) or `plugin`.
    #[arg(long, env = "IPCLINK_CHARGE_MEMORY", value_enum, default_value_t = ChargeMemory::Pod)]
    pub charge_memory: ChargeMemory,
    /// The host's cgroup mount, where the pods' memory cgroups are found.
    #[arg(long, env = "IPCLINK_CGROUP_ROOT", default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
    /// Largest sizeLimit of one link this node takes, in bytes (0: no cap).
    #[arg(long, env = "IPCLINK_MAX_LINK_BYTES", default_value_t = 0)]
    pub max_link_bytes: u64,
    /// Largest sum of the sizeLimits of the links on this node, in bytes (0: no cap).
    #[arg(long, env = "IPCLINK_MAX_NODE_BYTES", default_value_t = 0)]
    pub max_node_bytes: u64,
    /// Most channels and semaphores the links on this node declare in all (each
    /// costs the node kernel memory, a descriptor and metric series): a link past
    /// it is refused with ResourceExhausted, an edit past it waits (0: no cap).
    #[arg(long, env = "IPCLINK_MAX_NODE_OBJECTS", default_value_t = 0)]
    pub max_node_objects: usize,
    /// Publications this node takes (each is one mount on the node): more are
    /// refused with ResourceExhausted, and NodeGetInfo reports it to the scheduler
    /// (0: no limit).
    #[arg(long, env = "IPCLINK_MAX_VOLUMES_PER_NODE", default_value_t = 0)]
    pub max_volumes_per_node: u32,
    /// Where the pods' processes cannot be seen (no host pid namespace), read a
    /// FIFO's depth by opening its write end without blocking. Off by default: a
    /// reader still blocked in open() then sees EOF.
    #[arg(long, env = "IPCLINK_FIFO_OPEN_PROBE")]
    pub fifo_open_probe: bool,
    /// With --links-dir only: a link none of whose members has a podSelector admits
    /// every requester, even one that names no pod (csi-sanity). Without it, and
    /// always in a cluster, such a link admits no pod.
    #[arg(long, env = "IPCLINK_OPEN_SELECTORLESS_LINKS", requires = "links_dir")]
    pub open_selectorless_links: bool,
}

/// Flags of the controller plugin.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Flags both roles take.
    #[command(flatten)]
    pub common: Common,
}

/// Flags of the charge helper.
#[derive(Debug, Args)]
pub struct ChargeArgs {
    /// The `cgroup.procs` to join first.
    #[arg(long)]
    pub procs: PathBuf,
    /// The region, through the node plugin's descriptor (`/proc/PID/fd/N`).
    #[arg(long)]
    pub file: PathBuf,
    /// Bytes to allocate.
    #[arg(long)]
    pub size: u64,
}

/// Whose memory preallocated pages count against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChargeMemory {
    /// The first member pod's memory cgroup.
    Pod,
    /// The node plugin's own.
    Plugin,
}

/// Flags of both roles.
#[derive(Debug, Args)]
pub struct Common {
    /// gRPC endpoint, unix://PATH.
    #[arg(
        long,
        env = "CSI_ENDPOINT",
        default_value = "unix:///run/ipclink/csi.sock"
    )]
    pub endpoint: String,
    /// Directory for state files (and, on a node, the links' tmpfs mounts).
    /// [default: node /run/ipclink-csi — tmpfs, gone at reboot like the mounts it
    /// describes; controller /var/lib/ipclink-csi — its volumes outlive reboots]
    #[arg(long, env = "IPCLINK_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Directory of IpcLink (and Pod) YAML: the link source when running standalone.
    /// Without it, links and pods come from the Kubernetes API (in-cluster config or
    /// KUBECONFIG).
    #[arg(long, env = "IPCLINK_LINKS_DIR")]
    pub links_dir: Option<PathBuf>,
    /// Serve /metrics, /v1/links, /healthz and /readyz here.
    #[arg(long, env = "IPCLINK_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// How the metrics endpoint is protected, and the probes' own listener.
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// The release's metrics certificate Secret (NAMESPACE/NAME, with ca.crt, tls.crt,
    /// tls.key): served as soon as the operator has filled it, followed afterwards; a
    /// certificate made at start is served until then (clients checking the CA refuse
    /// it, so none sends a token to it).
    #[arg(
        long,
        env = "IPCLINK_METRICS_TLS_SECRET",
        value_name = "NAMESPACE/NAME",
        conflicts_with = "tls_cert_file"
    )]
    pub metrics_tls_secret: Option<ipclink_runtime::metrics_tls::SecretRef>,
}

/// A node name as Kubernetes allows it.
fn node_name(value: &str) -> Result<String, String> {
    ipclink_core::model::names::check_dns_subdomain(value)?;
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn selectorless_links_open_only_with_a_links_dir() {
        let node = [
            "ipclink-csi",
            "node",
            "--node-id",
            "n",
            "--open-selectorless-links",
        ];
        let e = Cli::try_parse_from(node).expect_err("no --links-dir");
        assert!(e.to_string().contains("--links-dir"), "{e}");
        assert!(Cli::try_parse_from([&node[..], &["--links-dir", "/l"]].concat()).is_ok());
    }

    #[test]
    fn every_flag_can_come_from_the_environment() {
        let (missing, seen) = ipclink_runtime::args::flags_without_env(&Cli::command());
        assert!(missing.is_empty(), "flags without env: {missing:?}");
        assert!(seen >= 20, "only {seen} flags seen");
    }
}
