//! Command line of `ipclink-sidecar`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Provisions IpcLinks on this machine (shared memory, FIFOs, socket directories,
/// semaphores) and serves their queue depths as Prometheus metrics.
#[derive(Debug, Parser)]
#[command(name = "ipclink-sidecar", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Materialize every link of the files, serve metrics, tear down on SIGTERM or Ctrl-C.
    Up(UpArgs),
    /// Check the files and print every problem; exit 2 if there is any.
    Validate {
        /// IpcLink YAML files (several documents per file allowed).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Serve `driver: ipclink` volumes to Docker or podman (the volume plugin protocol).
    VolumePlugin(PluginArgs),
    /// Exit 0 when a running sidecar reports every object present (`/readyz`), else 1;
    /// for Compose `healthcheck` in images without a shell.
    Ready {
        /// Address of the sidecar's endpoint.
        #[arg(long, env = "IPCLINK_LISTEN", default_value = "127.0.0.1:9464")]
        listen: SocketAddr,
    },
    /// Bring links back to their declared state (regions as declared and zeroed,
    /// semaphores at their initial values, what members made removed); refused, with
    /// nothing changed, while a container uses a link (exit 3).
    Reset(ResetArgs),
    /// Print a table of the links materialized under the root.
    Status {
        /// Base directory of the links.
        #[arg(long, env = "IPCLINK_ROOT", conflicts_with = "endpoint")]
        root: Option<PathBuf>,
        /// Ask a running `up` or `volume-plugin` (its `--listen` address, HOST:PORT)
        /// instead of reading the links here: in Compose it knows the containers by name.
        #[arg(long, value_parser = crate::cli::host_port)]
        endpoint: Option<String>,
        /// Print the `/v1/links` JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Arguments of `up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// IpcLink YAML files (several documents per file allowed).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Base directory; each link lives in ROOT/<namespace>/<name>/
    /// [default: /run/ipclink as root, else $XDG_RUNTIME_DIR/ipclink]
    #[arg(long, env = "IPCLINK_ROOT")]
    pub root: Option<PathBuf>,
    /// Address of the metrics and status endpoint (plain HTTP, no authentication: a
    /// loopback address unless --insecure-listen).
    #[arg(long, env = "IPCLINK_LISTEN", default_value = "127.0.0.1:9464")]
    pub listen: SocketAddr,
    /// Allow --listen off loopback: anyone who can connect then reads every link's
    /// names, depths and holders (e.g. inside a Compose project's network, with the
    /// port published on the host's loopback only).
    #[arg(long, env = "IPCLINK_INSECURE_LISTEN")]
    pub insecure_listen: bool,
    /// Leave the links in place on exit.
    #[arg(long, env = "IPCLINK_KEEP")]
    pub keep: bool,
    /// Refuse (exit 2, nothing changed) a file whose link exists with other objects,
    /// mode, owner or size, instead of applying the change live; on SIGHUP or a changed
    /// file, such an edit is then logged and not applied.
    #[arg(long, env = "IPCLINK_STRICT")]
    pub strict: bool,
    /// tmpfs per link (needs root; enforces sizeLimit) or a plain directory.
    /// [default: tmpfs as root, else dir]
    #[arg(long, env = "IPCLINK_STORAGE", value_enum)]
    pub storage: Option<Storage>,
    /// Docker API socket of the engine (`unix:///var/run/docker.sock`): discover which
    /// containers of this Compose project mount each link's volume, as which user, and
    /// report those that cannot use a channel as declared. Only read calls are made.
    #[arg(long, env = "IPCLINK_ENGINE")]
    pub engine: Option<String>,
    /// This sidecar's own container (id or name) for discovery. [default: $HOSTNAME]
    #[arg(long, env = "HOSTNAME")]
    pub container: Option<String>,
    /// Seconds between two discovery rounds.
    #[arg(long, env = "IPCLINK_DISCOVER_INTERVAL_SECONDS", default_value_t = 5)]
    pub discover_interval_seconds: u64,
    /// Where the members' processes cannot be seen, read a FIFO's depth by opening its
    /// write end without blocking. Off by default: a reader still blocked in open()
    /// then sees EOF.
    #[arg(long, env = "IPCLINK_FIFO_OPEN_PROBE")]
    pub fifo_open_probe: bool,
}

/// Arguments of `reset`.
#[derive(Debug, clap::Args)]
pub struct ResetArgs {
    /// IpcLink YAML files, as given to `up`; with --volume-plugin, volume names.
    #[arg(required = true)]
    pub targets: Vec<String>,
    /// Base directory of the links, as given to `up`.
    /// [default: /run/ipclink as root, else $XDG_RUNTIME_DIR/ipclink]
    #[arg(long, env = "IPCLINK_ROOT", conflicts_with = "volume_plugin")]
    pub root: Option<PathBuf>,
    /// Storage mode, as given to `up`. [default: tmpfs as root, else dir]
    #[arg(
        long,
        env = "IPCLINK_STORAGE",
        value_enum,
        conflicts_with = "volume_plugin"
    )]
    pub storage: Option<Storage>,
    /// Ask the running volume plugin on this socket to reset the named volumes.
    #[arg(long)]
    pub volume_plugin: Option<PathBuf>,
}

/// Arguments of `volume-plugin`.
#[derive(Debug, clap::Args)]
pub struct PluginArgs {
    /// Unix socket to serve the plugin protocol on (mode 0600), or the one systemd passes
    /// for this path (socket activation); name it in the engine's configuration (podman:
    /// `[engine.volume_plugins] ipclink = "PATH"` in containers.conf; Docker: see
    /// --docker-spec).
    #[arg(
        long,
        env = "IPCLINK_PLUGIN_SOCKET",
        default_value = "/run/ipclink/plugin.sock"
    )]
    pub socket: PathBuf,
    /// Base directory of the volumes (each is ROOT/docker/<name>) and of the state file.
    #[arg(
        long,
        env = "IPCLINK_PLUGIN_ROOT",
        default_value = "/run/ipclink/volumes"
    )]
    pub root: PathBuf,
    /// The only directory `Opts.link` files are read from (a name relative to it, or an
    /// absolute path inside it; no symlinks, regular files of at most 1 MiB).
    #[arg(
        long,
        env = "IPCLINK_PLUGIN_LINK_DIR",
        default_value = "/etc/ipclink/links"
    )]
    pub link_dir: PathBuf,
    /// Also serve `/metrics` and `/v1/links` for the volumes on this address (plain
    /// HTTP, no authentication: a loopback address unless --insecure-listen).
    #[arg(long, env = "IPCLINK_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Allow --listen off loopback: anyone who can connect then reads every volume's
    /// names, depths and holders.
    #[arg(long, env = "IPCLINK_INSECURE_LISTEN")]
    pub insecure_listen: bool,
    /// tmpfs per volume (needs root; enforces `size`) or a plain directory.
    /// [default: tmpfs as root, else dir]
    #[arg(long, env = "IPCLINK_STORAGE", value_enum)]
    pub storage: Option<Storage>,
    /// Where the containers' processes cannot be seen, read a FIFO's depth by opening
    /// its write end without blocking (a reader still blocked in open() then sees EOF).
    #[arg(long, env = "IPCLINK_FIFO_OPEN_PROBE")]
    pub fifo_open_probe: bool,
    /// Seconds between two reads of the link files volumes were made from (`Opts.link`):
    /// an edited file is applied to its live volume by the live rule (each Mount applies
    /// it too); 0 leaves edits to the next Mount.
    #[arg(long, env = "IPCLINK_APPLY_INTERVAL_SECONDS", default_value_t = 5)]
    pub apply_interval_seconds: u64,
    /// Docker API socket of the engine that uses the plugin (`unix:///var/run/docker.sock`,
    /// podman's `unix:///run/podman/podman.sock`): find which containers mount each
    /// volume, under which Compose service, so that holders are named, and report the
    /// containers that are not members of a volume's link or hold a channel in a role
    /// they are not declared for. Only read calls are made; empty: off.
    #[arg(long, env = "IPCLINK_ENGINE")]
    pub engine: Option<String>,
    /// Seconds between two discovery rounds.
    #[arg(long, env = "IPCLINK_DISCOVER_INTERVAL_SECONDS", default_value_t = 5)]
    pub discover_interval_seconds: u64,
    /// Docker's plugin spec file (e.g. /etc/docker/plugins/ipclink.spec): written
    /// (`unix://SOCKET`) once the socket answers and removed when the plugin stops, so
    /// that dockerd finds the plugin only while it runs and never waits on a dead socket.
    /// Under socket activation the file stays: the service manager keeps the socket.
    #[arg(long, env = "IPCLINK_DOCKER_SPEC")]
    pub docker_spec: Option<PathBuf>,
}

/// Storage choice on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Storage {
    /// One tmpfs per link.
    Tmpfs,
    /// A plain directory (sizes not enforced).
    Dir,
}

/// The default root: `/run/ipclink` for root, `$XDG_RUNTIME_DIR/ipclink` otherwise.
pub fn default_root() -> PathBuf {
    if nix::unistd::Uid::effective().is_root() {
        return PathBuf::from("/run/ipclink");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("ipclink"),
        _ => std::env::temp_dir().join(format!("ipclink-{}", nix::unistd::Uid::effective())),
    }
}

/// A `HOST:PORT` address (a name or an IP, and a port).
pub fn host_port(s: &str) -> Result<String, String> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(s.to_owned())
        }
        _ => Err(format!("{s:?} is not HOST:PORT (e.g. 127.0.0.1:9464)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
