//! `kubectl ipclink`: what the links of a cluster hold, read through the API server:
//! `top` lists every channel with its depth, capacity, readers, writers and holder pods
//! (from the node plugins' `/v1/links`, through the API server's pod proxy, with a
//! short-lived token of the chart's metrics reader ServiceAccount), and
//! `describe LINK` adds the link's status, conditions, members and recent Events.
//!
//! kubectl finds this binary as `kubectl-ipclink` on PATH; it uses the same kubeconfig
//! (KUBECONFIG, then ~/.kube/config, then the in-cluster service account).

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ipclink_core::IpcLink;
use ipclink_core::report::{LinksReport, ObjectRow, object_rows, printable, table};
use ipclink_core::sample::LinkSample;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams};

/// Channel depths and holders of IpcLinks.
#[derive(Debug, Parser)]
#[command(name = "kubectl ipclink", version)]
struct Cli {
    /// The namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// The namespace the chart is installed in: node plugins are looked for there only.
    #[arg(
        long,
        global = true,
        env = "IPCLINK_NAMESPACE",
        default_value = "ipclink-system"
    )]
    ipclink_namespace: String,
    /// The chart's release name: only pods of its DaemonSet (`RELEASE-node`) are asked.
    #[arg(
        long,
        global = true,
        env = "IPCLINK_RELEASE",
        default_value = "ipclink"
    )]
    release: String,
    /// Label selector of the ipclink node plugin pods.
    #[arg(
        long,
        global = true,
        env = "IPCLINK_PLUGIN_SELECTOR",
        default_value = "app.kubernetes.io/name=ipclink,app.kubernetes.io/component=node-plugin"
    )]
    plugin_selector: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every channel of the namespace's links (or one link's): depth, capacity, readers,
    /// writers and the pods that hold it, as the node plugins see them now.
    Top {
        /// Only this link.
        link: Option<String>,
        /// Links of every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// One link: status, conditions, members, channels with their holders, and Events.
    Describe {
        /// The link's name.
        link: String,
    },
}

/// The links of one node, as its node plugin reports them.
struct NodeReport {
    node: String,
    links: Vec<LinkSample>,
}

/// The longest `/v1/links` answer read from one node plugin.
const MAX_ANSWER: usize = 32 << 20;

/// Whether pod `p` belongs to the DaemonSet `daemonset` (its controller owner).
fn owned_by(p: &Pod, daemonset: &str) -> bool {
    p.metadata.owner_references.iter().flatten().any(|o| {
        o.controller == Some(true)
            && o.kind == "DaemonSet"
            && o.api_version == "apps/v1"
            && o.name == daemonset
    })
}

/// Asks every running node plugin for its links, through the API server's proxy to its
/// `metrics` port. Only pods of the chart's namespace that its DaemonSet owns are
/// asked: a tenant's pod carrying the same labels elsewhere is not a node plugin. A
/// plugin that cannot be asked, or whose answer is too large or not a report, is named
/// on stderr and skipped.
async fn gather(client: &kube::Client, cli: &Cli) -> anyhow::Result<Vec<NodeReport>> {
    let (ns, selector) = (&cli.ipclink_namespace, &cli.plugin_selector);
    let daemonset = format!("{}-node", cli.release);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let found = pods
        .list(&ListParams::default().labels(selector))
        .await
        .with_context(|| format!("listing the node plugin pods of namespace {ns} ({selector})"))?;
    let mut out = Vec::new();
    let mut running = 0;
    let mut token: Option<String> = None;
    for p in found.items {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        if phase != Some("Running") {
            continue;
        }
        if !owned_by(&p, &daemonset) {
            eprintln!(
                "warning: pod {ns}/{} carries the node plugin's labels but DaemonSet {daemonset} does not own it; skipped",
                printable(&p.name_any())
            );
            continue;
        }
        running += 1;
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let port = p
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .find(|port| port.name.as_deref() == Some("metrics"))
            .map(|port| port.container_port);
        let name = p.name_any();
        let Some(port) = port else {
            eprintln!("warning: node plugin {ns}/{name} has no port named metrics");
            continue;
        };
        let plain = p
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.args.iter().flatten())
            .any(|a| a == "--metrics-auth=none");
        let mut request = http::Request::get(if plain {
            format!("/api/v1/namespaces/{ns}/pods/{name}:{port}/proxy/v1/links")
        } else {
            format!("/api/v1/namespaces/{ns}/pods/https:{name}:{port}/proxy/v1/links")
        });
        if !plain {
            // The proxy keeps the caller's own credentials: the node plugin gets a
            // short-lived token of the chart's metrics reader instead.
            let t = match &token {
                Some(t) => t.clone(),
                None => token.insert(reader_token(client, ns).await?).clone(),
            };
            request = request.header(PROXIED_AUTHORIZATION, format!("Bearer {t}"));
        }
        let request = request.body(Vec::new())?;
        match read_report(client, request).await {
            Ok(report) => out.push(NodeReport {
                node,
                links: report.links,
            }),
            Err(e) => eprintln!(
                "warning: node plugin {ns}/{name} on node {}: {}; skipped",
                printable(&node),
                printable(&format!("{e:#}"))
            ),
        }
    }
    if running == 0 {
        anyhow::bail!(
            "no running ipclink node plugin pod of DaemonSet {ns}/{daemonset} matches {selector}: is the chart installed there (--ipclink-namespace, --release)?"
        );
    }
    Ok(out)
}

/// One node plugin's `/v1/links`, read up to [`MAX_ANSWER`] bytes.
async fn read_report(
    client: &kube::Client,
    request: http::Request<Vec<u8>>,
) -> anyhow::Result<LinksReport> {
    use futures::AsyncReadExt;
    let body = client.request_stream(request).await?;
    let mut bytes = Vec::new();
    body.take(MAX_ANSWER as u64 + 1)
        .read_to_end(&mut bytes)
        .await?;
    if bytes.len() > MAX_ANSWER {
        anyhow::bail!("its answer is larger than {MAX_ANSWER} bytes");
    }
    serde_json::from_slice(&bytes).context("its answer is not a /v1/links report")
}

/// The header the node plugins read a token from behind the API server's proxy.
const PROXIED_AUTHORIZATION: &str = "X-Ipclink-Authorization";

/// Label of the chart's metrics reader ServiceAccount.
const READER: &str = "app.kubernetes.io/component=metrics-reader";

/// A 10-minute token of the metrics reader ServiceAccount of namespace `ns` (a
/// TokenRequest: needs `create` on `serviceaccounts/token` there, which the chart's
/// `ipclink-metrics-reader-token` Role grants to whoever it is bound to).
async fn reader_token(client: &kube::Client, ns: &str) -> anyhow::Result<String> {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let found = accounts
        .list(&ListParams::default().labels(READER))
        .await
        .with_context(|| format!("listing the metrics reader ServiceAccount of {ns}"))?;
    let Some(account) = found.items.first() else {
        anyhow::bail!(
            "namespace {ns} has no ServiceAccount labelled {READER} (the chart makes one)"
        );
    };
    let name = account.name_any();
    let body = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        // For the node plugins only: a token of the metrics audience cannot act on the
        // API server, whoever it reaches.
        "spec": {"expirationSeconds": 600, "audiences": [ipclink_core::model::names::METRICS_AUDIENCE]}
    });
    let request = http::Request::post(format!(
        "/api/v1/namespaces/{ns}/serviceaccounts/{name}/token"
    ))
    .header(http::header::CONTENT_TYPE, "application/json")
    .body(serde_json::to_vec(&body)?)?;
    let answer: serde_json::Value = client.request(request).await.with_context(|| {
        format!("a token of ServiceAccount {ns}/{name} (needs create on serviceaccounts/token)")
    })?;
    answer["status"]["token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no token in the TokenRequest answer for {ns}/{name}"))
}

/// `top`'s columns.
const TOP: [&str; 10] = [
    "NAMESPACE",
    "LINK",
    "CHANNEL",
    "KIND",
    "NODE",
    "DEPTH",
    "CAPACITY",
    "READERS",
    "WRITERS",
    "HOLDERS",
];

fn top_row(r: ObjectRow, node: &str) -> Vec<String> {
    vec![
        r.namespace,
        r.link,
        r.channel,
        r.kind,
        node.to_owned(),
        r.depth,
        r.capacity,
        r.readers,
        r.writers,
        r.holders,
    ]
}

/// The rows of the links `keep` selects, sorted by namespace, link and node.
fn rows(reports: &[NodeReport], keep: impl Fn(&LinkSample) -> bool) -> Vec<Vec<String>> {
    let mut by_link: BTreeMap<(String, String, String), Vec<Vec<String>>> = BTreeMap::new();
    for r in reports {
        for l in r.links.iter().filter(|l| keep(l)) {
            let rows = object_rows(l).into_iter().map(|o| top_row(o, &r.node));
            by_link
                .entry((l.namespace.to_string(), l.name.to_string(), r.node.clone()))
                .or_default()
                .extend(rows);
        }
    }
    by_link.into_values().flatten().collect()
}

/// Notes under a table: links whose holders or depths cannot be known, and why.
fn notes(reports: &[NodeReport], keep: impl Fn(&LinkSample) -> bool) -> String {
    let mut out = String::new();
    for r in reports {
        for l in r.links.iter().filter(|l| keep(l)) {
            let at = printable(&format!("{}/{} on {}", l.namespace, l.name, r.node)).into_owned();
            if !l.holders_known {
                let why = l
                    .holders_unknown
                    .as_deref()
                    .unwrap_or("see the node plugin's log; it needs the host's pid namespace");
                out.push_str(&format!("{at}: holders unknown ({})\n", printable(why)));
            }
            if l.walk_truncated {
                out.push_str(&format!(
                    "{at}: objects members created: unknown (more entries than one walk reads)\n"
                ));
            }
            if l.unreported_objects > 0 {
                out.push_str(&format!(
                    "{at}: {} more objects members created are not listed\n",
                    l.unreported_objects
                ));
            }
        }
    }
    out
}

async fn top(
    client: &kube::Client,
    cli: &Cli,
    link: Option<&str>,
    all: bool,
) -> anyhow::Result<String> {
    let ns = cli
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let reports = gather(client, cli).await?;
    let keep =
        |l: &LinkSample| (all || *l.namespace == *ns) && link.is_none_or(|name| *l.name == *name);
    let rows = rows(&reports, keep);
    if rows.is_empty() {
        let scope = if all {
            "any namespace".to_owned()
        } else {
            format!("namespace {ns}")
        };
        return Ok(match link {
            Some(name) => format!("link {name} is not mounted on any node in {scope}\n"),
            None => format!("no links mounted on any node in {scope}\n"),
        });
    }
    Ok(table(&TOP, &rows) + &notes(&reports, keep))
}

/// `describe`'s text, in kubectl's layout.
async fn describe(client: &kube::Client, cli: &Cli, name: &str) -> anyhow::Result<String> {
    let ns = cli
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let links: Api<IpcLink> = Api::namespaced(client.clone(), &ns);
    let link = links
        .get_opt(name)
        .await
        .context("reading the IpcLink")?
        .with_context(|| format!("IpcLink {ns}/{name} not found"))?;
    let status = link.status.clone().unwrap_or_default();
    let mut out = String::new();
    let field =
        |out: &mut String, k: &str, v: &str| out.push_str(&format!("{k:<12}{}\n", printable(v)));
    field(&mut out, "Name:", name);
    field(&mut out, "Namespace:", &ns);
    field(
        &mut out,
        "Phase:",
        &status
            .phase
            .map_or_else(|| "Pending".to_owned(), |p| format!("{p:?}")),
    );
    field(
        &mut out,
        "Node:",
        status.node.as_deref().unwrap_or("<none>"),
    );
    let limit = link.spec.size_limit.as_ref().map(|q| q.0.as_str());
    field(&mut out, "Size limit:", limit.unwrap_or("64Mi (default)"));

    out.push_str("Conditions:\n");
    let conditions: Vec<Vec<String>> = status
        .conditions
        .iter()
        .map(|c| {
            vec![
                c.type_.clone(),
                c.status.clone(),
                c.reason.clone(),
                c.message.clone(),
            ]
        })
        .collect();
    out.push_str(&indent(&table(
        &["TYPE", "STATUS", "REASON", "MESSAGE"],
        &conditions,
    )));

    out.push_str("Members:\n");
    let members: Vec<Vec<String>> = status
        .members
        .iter()
        .map(|m| {
            vec![
                m.member.clone(),
                m.pod.clone(),
                m.node.clone().unwrap_or_else(|| "<none>".into()),
                m.mounted.to_string(),
            ]
        })
        .collect();
    out.push_str(&indent(&table(
        &["MEMBER", "POD", "NODE", "MOUNTED"],
        &members,
    )));

    out.push_str("Channels:\n");
    let keep = |l: &LinkSample| *l.namespace == *ns && *l.name == *name;
    match gather(client, cli).await {
        Ok(reports) => {
            let rows = rows(&reports, keep);
            if rows.is_empty() {
                out.push_str("  not mounted on any node\n");
            } else {
                // The namespace and link columns say nothing here.
                let rows: Vec<Vec<String>> = rows.into_iter().map(|r| r[2..].to_vec()).collect();
                out.push_str(&indent(&table(&TOP[2..], &rows)));
                out.push_str(&indent(&notes(&reports, keep)));
                out.push_str("Holders:\n");
                let holders = holder_rows(&reports, keep);
                if holders.is_empty() {
                    out.push_str("  <none>\n");
                } else {
                    out.push_str(&indent(&table(
                        &["CHANNEL", "ROLE", "POD", "CONTAINER", "COMMAND", "PID"],
                        &holders,
                    )));
                }
            }
        }
        Err(e) => out.push_str(&format!("  unknown: {}\n", printable(&format!("{e:#}")))),
    }

    out.push_str("Events:\n");
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let mut found = events
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=IpcLink,involvedObject.name={name}"
        )))
        .await
        .context("listing the link's Events")?
        .items;
    found.sort_by_key(|e| {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or(e.event_time.as_ref().map(|t| t.0))
    });
    let rows: Vec<Vec<String>> = found
        .iter()
        .rev()
        .take(10)
        .rev()
        .map(|e| {
            vec![
                e.type_.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
                e.count.unwrap_or(1).to_string(),
                e.message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("  <none>\n");
    } else {
        out.push_str(&indent(&table(
            &["TYPE", "REASON", "COUNT", "MESSAGE"],
            &rows,
        )));
    }
    Ok(out)
}

/// One row per holder of the kept links' objects.
fn holder_rows(reports: &[NodeReport], keep: impl Fn(&LinkSample) -> bool) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for l in reports.iter().flat_map(|r| &r.links).filter(|l| keep(l)) {
        let channels = l.channels.iter().map(|c| (&c.info.name, &c.holders));
        let semaphores = l.semaphores.iter().map(|s| (&s.info.name, &s.holders));
        for (channel, holders) in channels.chain(semaphores) {
            for h in holders {
                let pod = h.pod.rsplit('/').next().unwrap_or(&h.pod);
                out.push(vec![
                    channel.clone(),
                    h.role.clone(),
                    pod.to_owned(),
                    h.container.clone(),
                    h.command.clone(),
                    h.pid.to_string(),
                ]);
            }
        }
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

async fn run(cli: Cli) -> anyhow::Result<String> {
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes API: set KUBECONFIG or ~/.kube/config")?;
    match &cli.command {
        Command::Top {
            link,
            all_namespaces,
        } => top(&client, &cli, link.as_deref(), *all_namespaces).await,
        Command::Describe { link } => describe(&client, &cli, link).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", printable(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn pod(owner: Option<OwnerReference>) -> Pod {
        let mut p = Pod::default();
        p.metadata.owner_references = owner.map(|o| vec![o]);
        p
    }

    fn owner(kind: &str, name: &str, api: &str, controller: Option<bool>) -> OwnerReference {
        OwnerReference {
            api_version: api.into(),
            kind: kind.into(),
            name: name.into(),
            uid: "u".into(),
            controller,
            block_owner_deletion: None,
        }
    }

    #[test]
    fn only_pods_the_charts_daemonset_controls_are_node_plugins() {
        let ds = "ipclink-node";
        assert!(owned_by(
            &pod(Some(owner("DaemonSet", ds, "apps/v1", Some(true)))),
            ds
        ));
        for (what, p) in [
            ("no owner", pod(None)),
            (
                "another DaemonSet",
                pod(Some(owner("DaemonSet", "evil-node", "apps/v1", Some(true)))),
            ),
            (
                "a ReplicaSet",
                pod(Some(owner("ReplicaSet", ds, "apps/v1", Some(true)))),
            ),
            (
                "not the controller",
                pod(Some(owner("DaemonSet", ds, "apps/v1", Some(false)))),
            ),
            (
                "another API group",
                pod(Some(owner("DaemonSet", ds, "evil.dev/v1", Some(true)))),
            ),
        ] {
            assert!(!owned_by(&p, ds), "{what}");
        }
    }

    #[test]
    fn the_cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
