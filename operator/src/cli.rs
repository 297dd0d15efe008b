//! Command line of `ipclink-operator`.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};

/// Reconciles IpcLink resources.
#[derive(Parser, Debug)]
#[command(name = "ipclink-operator", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the IpcLink CustomResourceDefinition (YAML) for `kubectl apply -f -`.
    Crd,
    /// Run the controller against the cluster of KUBECONFIG (or in-cluster).
    Run(Box<RunArgs>),
    /// Delete every IpcLink and wait until the running operator has cleaned each up
    /// (the chart's pre-delete hook). Refuses, changing nothing, while a member has a
    /// link mounted.
    RemoveLinks(RemoveArgs),
}

/// Arguments of `remove-links`.
#[derive(clap::Args, Debug)]
pub struct RemoveArgs {
    /// Give up (non-zero exit) when the links are not gone after this many seconds.
    #[arg(long, env = "IPCLINK_TIMEOUT_SECONDS", default_value_t = 120)]
    pub timeout_seconds: u64,
    /// Also wait until the node plugin pods found by label (`NAMESPACE/SELECTOR`) hold
    /// no link, so no link stays mounted on a node once they are removed.
    #[arg(long, env = "IPCLINK_NODE_PLUGINS", value_name = "NAMESPACE/SELECTOR", value_parser = node_plugins)]
    pub node_plugins: Option<(String, String)>,
    /// Metrics port of the node plugin pods.
    #[arg(long, env = "IPCLINK_NODE_PLUGIN_PORT", default_value_t = 9809)]
    pub node_plugin_port: u16,
    /// How the node plugins are reached.
    #[command(flatten)]
    pub access: PluginAccess,
}

/// How the node plugins' (and `https://` endpoints') `/v1/links` are reached.
#[derive(clap::Args, Debug)]
pub struct PluginAccess {
    /// `https` (the node plugins' metrics with Kubernetes authentication: the token of
    /// --links-token-file is sent, to a plugin whose certificate the CA vouches for
    /// only) or `http` (plain, no token).
    #[arg(
        long,
        env = "IPCLINK_NODE_PLUGIN_SCHEME",
        value_enum,
        default_value = "https"
    )]
    pub node_plugin_scheme: Scheme,
    /// The bearer token sent to `https` endpoints, read at each request: a projected
    /// ServiceAccount token of the audience ipclink.dev/metrics (the chart mounts one
    /// here), never one for the API server.
    #[arg(
        long,
        env = "IPCLINK_LINKS_TOKEN_FILE",
        default_value = "/var/run/secrets/ipclink.dev/metrics/token",
        value_name = "FILE"
    )]
    pub links_token_file: std::path::PathBuf,
    /// CA certificates (PEM) the `https` endpoints' certificates must chain to (a
    /// cert-manager Secret's ca.crt, or the release's metrics Secret's). Without it, or
    /// the CA of --metrics-tls-secret, no `https` endpoint is read: a token is never
    /// sent to a peer whose certificate was not checked.
    #[arg(long, env = "IPCLINK_LINKS_CA_FILE", value_name = "FILE")]
    pub links_ca_file: Option<std::path::PathBuf>,
    /// The name the node plugins' certificates carry (they are reached by pod address,
    /// and their certificate names their Service).
    #[arg(long, env = "IPCLINK_LINKS_SERVER_NAME", value_name = "DNS-NAME")]
    pub links_server_name: Option<String>,
}

/// How an endpoint is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTPS with a bearer token.
    Https,
}

impl PluginAccess {
    /// The TLS settings for `https` endpoints: checked against --links-ca-file, else
    /// against `ca` (the release's metrics CA); `None` when there is neither (no
    /// `https` endpoint is read then). A --links-ca-file that does not exist is an
    /// error, unless `lenient` (the uninstall hook: a release whose operator never made
    /// its CA has no link to wait for on a node).
    pub fn secure(
        &self,
        ca: Option<&[u8]>,
        lenient: bool,
    ) -> anyhow::Result<Option<ipclink_runtime::client::Secure>> {
        use ipclink_runtime::tls::{ServerCheck, client_config};
        let check = match (&self.links_ca_file, ca) {
            (Some(f), _) if f.exists() => ServerCheck::Ca(f.clone()),
            (Some(f), _) if !lenient => {
                anyhow::bail!("--links-ca-file {}: no such file", f.display())
            }
            (Some(f), Some(pem)) => {
                tracing::warn!(file = %f.display(), "--links-ca-file does not exist; checking against the metrics Secret's CA");
                ServerCheck::CaPem(pem.to_vec())
            }
            (None, Some(pem)) => ServerCheck::CaPem(pem.to_vec()),
            (f, None) => {
                if self.node_plugin_scheme == Scheme::Https {
                    tracing::warn!(
                        file = ?f,
                        "no CA to check the node plugins' certificates against (--links-ca-file, --metrics-tls-secret): https endpoints are not read, and no token is sent"
                    );
                }
                return Ok(None);
            }
        };
        let tls = client_config(&check).map_err(|e| anyhow::anyhow!("--links-ca-file: {e}"))?;
        Ok(Some(ipclink_runtime::client::Secure {
            tls,
            token_file: Some(self.links_token_file.clone()),
            server_name: self.links_server_name.clone(),
        }))
    }
}

/// Arguments of `run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long, env = "IPCLINK_METRICS_LISTEN", default_value = "0.0.0.0:9810")]
    pub metrics_listen: SocketAddr,
    /// How the metrics endpoint is protected, and the probes' own listener.
    #[command(flatten)]
    pub metrics: ipclink_runtime::args::MetricsArgs,
    /// The release's metrics certificate Secret (NAMESPACE/NAME; the chart makes it
    /// empty): filled with a CA and a certificate for --metrics-tls-names when empty
    /// (again if it is emptied later), served here and by the node plugins, and the CA
    /// the node plugins are checked against.
    #[arg(
        long,
        env = "IPCLINK_METRICS_TLS_SECRET",
        value_name = "NAMESPACE/NAME",
        conflicts_with = "tls_cert_file",
        requires = "metrics_tls_names"
    )]
    pub metrics_tls_secret: Option<ipclink_runtime::metrics_tls::SecretRef>,
    /// Seconds between two looks at --metrics-tls-secret (refilled with what this
    /// process serves if it was emptied).
    #[arg(long, env = "IPCLINK_METRICS_TLS_CHECK_SECONDS", default_value_t = 60)]
    pub metrics_tls_check_seconds: u64,
    /// The DNS names the certificate of --metrics-tls-secret carries (the node plugins'
    /// and the operator's metrics Services), comma-separated.
    #[arg(
        long,
        env = "IPCLINK_METRICS_TLS_NAMES",
        value_delimiter = ',',
        value_name = "DNS-NAME,..."
    )]
    pub metrics_tls_names: Vec<String>,
    /// Links reconciled at once.
    #[arg(long, env = "IPCLINK_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Look at an unchanged link again after this many seconds.
    #[arg(long, env = "IPCLINK_RESYNC_SECONDS", default_value_t = 300)]
    pub resync_seconds: u64,
    /// A node plugin's (or sidecar's) metrics address whose /v1/links is gathered:
    /// `[NODE=]HOST:PORT` (plain http) or `[NODE=]https://HOST:PORT`. Repeatable, or
    /// comma-separated.
    #[arg(
        long = "links-endpoint",
        env = "IPCLINK_LINKS_ENDPOINTS",
        value_delimiter = ',',
        value_name = "[NODE=]HOST:PORT",
        value_parser = endpoint
    )]
    pub links_endpoints: Vec<(String, String)>,
    /// Gather from node plugin pods found by label: `NAMESPACE/SELECTOR`, e.g.
    /// `ipclink-system/app.kubernetes.io/component=node-plugin`.
    #[arg(long, env = "IPCLINK_NODE_PLUGINS", value_name = "NAMESPACE/SELECTOR", value_parser = node_plugins)]
    pub node_plugins: Option<(String, String)>,
    /// Metrics port of the node plugin pods.
    #[arg(long, env = "IPCLINK_NODE_PLUGIN_PORT", default_value_t = 9809)]
    pub node_plugin_port: u16,
    /// How the node plugins are reached.
    #[command(flatten)]
    pub access: PluginAccess,
    /// Seconds between two gatherings of depths (the rate at which status.channels
    /// changes).
    #[arg(long, env = "IPCLINK_DEPTH_INTERVAL_SECONDS", default_value_t = 30)]
    pub depth_interval_seconds: u64,
    /// Node plugins asked for depths at once.
    #[arg(long, env = "IPCLINK_DEPTH_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub depth_concurrency: u16,
    /// Seconds one node plugin has to answer with its depths (1 to 60).
    #[arg(long, env = "IPCLINK_DEPTH_TIMEOUT_SECONDS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub depth_timeout_seconds: u64,
    /// A node plugin's last depths are shown for this many intervals after it stopped
    /// answering; then its links' status shows them stale (`depthsStale`, objects
    /// without figures) (1 to 100).
    #[arg(long, env = "IPCLINK_DEPTH_STALE_INTERVALS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub depth_stale_intervals: u32,
    /// A link's status is written at most once in this many seconds when only its
    /// depths changed (changes of phase, conditions or members are written at once).
    #[arg(
        long,
        env = "IPCLINK_STATUS_MIN_INTERVAL_SECONDS",
        default_value_t = 10
    )]
    pub status_min_interval_seconds: u64,
    /// Seconds a persistent link's node may be NotReady before the link is re-homed:
    /// with no member mounting it, its claim is released so the next member's node is
    /// chosen again (its data does not move). A deleted Node re-homes at once. 0: never.
    #[arg(long, env = "IPCLINK_REHOME_AFTER_SECONDS", default_value_t = 300)]
    pub rehome_after_seconds: u64,
    /// Do not provision PersistentVolumes for persistent-mode claims (when
    /// external-provisioner does it through the CSI controller instead).
    #[arg(long, env = "IPCLINK_NO_PROVISIONER")]
    pub no_provisioner: bool,
    /// Elect one leader among the replicas through a Lease: only the leader
    /// reconciles, provisions and gathers depths; every replica serves metrics and
    /// health. A leader that loses the Lease exits.
    #[arg(long, env = "IPCLINK_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Namespace of the leader Lease.
    #[arg(
        long,
        env = "POD_NAMESPACE",
        default_value = "default",
        value_name = "NAMESPACE"
    )]
    pub leader_elect_namespace: String,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "IPCLINK_LEADER_ELECT_LEASE",
        default_value = "ipclink-operator",
        value_name = "NAME"
    )]
    pub leader_elect_lease: String,
    /// Seconds a leader's Lease stays valid without renewal: how long a standby waits
    /// after a leader died without releasing it (2 to 3600).
    #[arg(long, env = "IPCLINK_LEADER_ELECT_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub leader_elect_duration_seconds: u64,
}

/// (node label, address) of a `--links-endpoint`.
fn endpoint(arg: &str) -> Result<(String, String), String> {
    let (node, addr) = arg.split_once('=').unwrap_or((arg, arg));
    let hostport = ["https://", "http://"]
        .iter()
        .find_map(|s| addr.strip_prefix(s))
        .unwrap_or(addr);
    let valid = hostport
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if !valid {
        return Err(format!(
            "{arg:?}: expected [NODE=][http://|https://]HOST:PORT"
        ));
    }
    Ok((node.to_owned(), addr.to_owned()))
}

/// (namespace, label selector) of `--node-plugins`.
fn node_plugins(arg: &str) -> Result<(String, String), String> {
    arg.split_once('/')
        .filter(|(ns, sel)| !ns.is_empty() && !sel.is_empty())
        .map(|(ns, sel)| (ns.to_owned(), sel.to_owned()))
        .ok_or_else(|| format!("{arg:?}: expected NAMESPACE/SELECTOR"))
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
    fn endpoints_and_selectors_are_checked() {
        assert_eq!(
            endpoint("node-a=10.0.0.1:9809"),
            Ok(("node-a".into(), "10.0.0.1:9809".into()))
        );
        assert_eq!(
            endpoint("127.0.0.1:1"),
            Ok(("127.0.0.1:1".into(), "127.0.0.1:1".into()))
        );
        for bad in ["", "host", ":80", "a=host:port", "host:70000"] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
        assert_eq!(
            node_plugins("ipclink-system/app=x"),
            Ok(("ipclink-system".into(), "app=x".into()))
        );
        for bad in ["", "ns", "ns/", "/app=x"] {
            assert!(node_plugins(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_lease_duration_outside_its_range_is_refused_by_name() {
        for bad in ["0", "1", "3601", "x"] {
            let e = Cli::try_parse_from([
                "ipclink-operator",
                "run",
                "--leader-elect-duration-seconds",
                bad,
            ])
            .expect_err(bad);
            assert!(
                e.to_string().contains("--leader-elect-duration-seconds"),
                "{e}"
            );
        }
        let ok = Cli::try_parse_from(["ipclink-operator", "run", "--leader-elect"]).expect("ok");
        let Command::Run(args) = ok.command else {
            panic!("run")
        };
        assert!(args.leader_elect);
        assert_eq!(args.leader_elect_duration_seconds, 15);
    }

    #[test]
    fn every_flag_can_come_from_the_environment() {
        let (missing, seen) = ipclink_runtime::args::flags_without_env(&Cli::command());
        assert!(missing.is_empty(), "flags without env: {missing:?}");
        assert!(seen >= 30, "only {seen} flags seen");
    }
}
