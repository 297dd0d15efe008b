//! `ipclink-sidecar status`: the table (or JSON) of the links here or of a running
//! sidecar.

use std::path::{Path, PathBuf};

use ipclink_core::probe::holders::AllProcesses;
use ipclink_core::probe::{LinkProbe, Observer};
use ipclink_core::sample::LinkSample;
use ipclink_core::{StorageMode, Store};
use ipclink_runtime::links::LinkSet;

use crate::Error;
use crate::cli::default_root;

/// `ipclink-sidecar status`: samples of every recorded link under `root`.
pub fn status(root: &Path) -> Result<Vec<LinkSample>, Error> {
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let store = Store::open(root, StorageMode::default_for_user())?;
    let (records, bad) = store.records();
    for path in bad {
        // The volume plugin keeps its state in ROOT/volumes/.volumes.json under the
        // default root, where a link named `volumes` of namespace `volumes` would keep
        // its record: that file is the plugin's, not a broken record.
        if path.ends_with(&format!("/{0}", crate::plugin::STATE_FILE)) {
            tracing::debug!(%path, "the volume plugin's state file, not a link record");
            continue;
        }
        tracing::warn!(%path, "unreadable link record skipped");
    }
    let probes = records
        .iter()
        .filter_map(|r| LinkProbe::of_record(&store, r).ok())
        .collect();
    let observer = Observer::new(Box::new(AllProcesses), true, false);
    Ok(LinkSet::new(probes).observed_by(observer).sample())
}

/// Renders samples as the `status` table: the columns of `kubectl ipclink top`, then
/// each object's owner and mode.
pub fn status_table(samples: &[LinkSample]) -> String {
    let rows: Vec<Vec<String>> = samples
        .iter()
        .flat_map(ipclink_core::report::object_rows)
        .map(|r| {
            vec![
                format!("{}/{}", r.namespace, r.link),
                r.channel,
                r.kind,
                r.origin.to_owned(),
                r.depth,
                r.capacity,
                r.readers,
                r.writers,
                r.holders,
                r.owner,
                r.mode,
            ]
        })
        .collect();
    let mut out = ipclink_core::report::table(
        &[
            "LINK", "CHANNEL", "KIND", "ORIGIN", "DEPTH", "CAPACITY", "READERS", "WRITERS",
            "HOLDERS", "OWNER", "MODE",
        ],
        &rows,
    );
    // With --endpoint these come from another process: shown printable too.
    use ipclink_core::report::printable;
    for s in samples.iter().filter(|s| s.walk_truncated) {
        out.push_str(&format!(
            "{}: objects members created: unknown (more entries than one walk reads)\n",
            printable(&format!("{}/{}", s.namespace, s.name)),
        ));
    }
    for s in samples.iter().filter(|s| s.unreported_objects > 0) {
        out.push_str(&format!(
            "{}: {} more objects members created are not listed (at most {} per link are, in at most {} KiB of metrics)\n",
            printable(&format!("{}/{}", s.namespace, s.name)),
            s.unreported_objects,
            ipclink_core::probe::created::MAX_REPORTED,
            ipclink_core::probe::created::METRICS_BUDGET >> 10,
        ));
    }
    for s in samples {
        out.push_str(&format!(
            "{}: {} of {} used{}\n",
            printable(&format!("{}/{}", s.namespace, s.name)),
            ipclink_core::report::human_bytes(s.used_bytes),
            ipclink_core::report::human_bytes(s.limit_bytes),
            if s.size_limit_enforced {
                ""
            } else {
                " (sizeLimit not enforced: a plain directory)"
            }
        ));
        if let Some(why) = &s.holders_unknown {
            out.push_str(&format!(
                "{}: holders unknown: {}\n",
                printable(&format!("{}/{}", s.namespace, s.name)),
                printable(why)
            ));
        }
        for p in &s.pending {
            out.push_str(&format!(
                "{}: pending {}: {}\n",
                printable(&format!("{}/{}", s.namespace, s.name)),
                printable(&p.field),
                printable(&p.message)
            ));
        }
    }
    out
}

/// One line per channel a member container holds in a role it is not declared for.
fn undeclared_lines(members: &[ipclink_core::report::MemberReport]) -> String {
    use ipclink_core::report::printable;
    let mut out = String::new();
    for m in members {
        for (channel, role) in &m.undeclared {
            let declared = match m.roles.get(channel).map(Vec::as_slice) {
                Some([]) | None => "none".to_owned(),
                Some(roles) => roles.join(" and "),
            };
            out.push_str(&format!(
                "{}: service {} (container {}) holds {} as {}, not as declared (declared: {})\n",
                printable(&format!("{}/{}", m.namespace, m.link)),
                printable(&m.service),
                printable(&m.container),
                printable(channel),
                printable(role),
                printable(&declared)
            ));
        }
    }
    out
}

/// `status`: the links under `root` (or of the sidecar at `endpoint`), as a table or as
/// the `/v1/links` JSON.
pub fn run(
    root: Option<PathBuf>,
    endpoint: Option<String>,
    json: bool,
    runtime: impl Fn() -> Result<tokio::runtime::Runtime, Error>,
) -> Result<(), Error> {
    let report = match endpoint {
        Some(at) => runtime().and_then(|rt| {
            rt.block_on(ipclink_runtime::client::links(
                &at,
                None,
                std::time::Duration::from_secs(10),
            ))
            .map_err(|source| Error::Io {
                what: format!("GET http://{at}/v1/links"),
                source,
            })
        }),
        None => status(&root.unwrap_or_else(default_root)).map(|links| {
            ipclink_core::report::LinksReport {
                links,
                members: Vec::new(),
            }
        }),
    };
    report.map(|report| {
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
        } else if report.links.is_empty() {
            println!("no links");
        } else {
            print!("{}", status_table(&report.links));
            print!("{}", undeclared_lines(&report.members));
        }
    })
}
