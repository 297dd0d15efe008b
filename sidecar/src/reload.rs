//! A running `up` follows its files: on SIGHUP, and when a file's size or modification
//! time changes, the files are read again and every link is made to serve its spec by
//! the live rule (what waits for the members is logged and shown by `status`). Invalid
//! files change nothing: the links keep serving as they were.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ipclink_core::probe::holders::{AllProcesses, ContainerNames, ContainerProcesses, Members};
use ipclink_core::{LinkPlan, Store};
use ipclink_runtime::Shutdown;
use ipclink_runtime::links::SharedLinks;

use crate::links::{apply_link, load_links, open_probes};

/// What a reload works on.
pub(crate) struct Follow {
    /// The files `up` was started with.
    pub files: Vec<PathBuf>,
    /// Their links' store.
    pub store: Arc<Store>,
    /// Every link served since start, in the order first served (torn down on exit
    /// unless `--keep`); a link no longer in the files stays until then.
    pub served: Arc<Mutex<Vec<LinkPlan>>>,
    /// The probes behind `/metrics`.
    pub links: SharedLinks,
    /// `--strict`: an edit that is more than new objects is refused.
    pub strict: bool,
    /// The member containers' ids and names, when discovery runs (Compose).
    pub containers: Option<ContainerNames>,
}

/// How often the files' sizes and times are looked at.
const POLL: Duration = Duration::from_secs(2);

/// A file's size and modification time, to notice an edit.
type Stamp = Option<(u64, SystemTime)>;

/// One look at the files: each one's stamp, and those whose inode no longer has a name
/// (replaced on the host behind a bind mount of the file itself, which keeps the old
/// inode).
fn look(files: &[PathBuf]) -> (Vec<Stamp>, Vec<String>) {
    use std::os::unix::fs::MetadataExt;
    let mut replaced = Vec::new();
    let stamps = files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f).ok()?;
            if m.nlink() == 0 {
                replaced.push(f.display().to_string());
            }
            Some((m.len(), m.modified().ok()?))
        })
        .collect();
    (stamps, replaced)
}

/// Follows the files until shutdown.
pub(crate) fn spawn(follow: Follow, shutdown: Shutdown) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let follow = Arc::new(follow);
    tokio::spawn(async move {
        let (mut seen, _) = look(&follow.files);
        let mut tick = tokio::time::interval(POLL);
        loop {
            let why = tokio::select! {
                _ = hup.recv() => "SIGHUP",
                _ = tick.tick() => "a file changed",
                _ = shutdown.wait() => return,
            };
            let (now, replaced) = look(&follow.files);
            follow.links.lock().unwrap_or_else(|p| p.into_inner()).set_fault(
                "file",
                (!replaced.is_empty()).then(|| {
                    format!(
                        "{} was replaced outside this container (an editor or `sed -i` writes a new file) behind a single-file bind mount, which keeps showing the old one: edits never reach the sidecar; mount the file's directory instead (Compose: `- ./:/etc/ipclink:ro`; Kubernetes: a ConfigMap without subPath), then recreate the sidecar",
                        replaced.join(", ")
                    )
                }),
            );
            if why != "SIGHUP" && now == seen {
                continue;
            }
            seen = now;
            let f = follow.clone();
            let _ = tokio::task::spawn_blocking(move || reload(&f, why)).await;
        }
    });
    Ok(())
}

/// Reads the files again and applies them.
fn reload(f: &Follow, why: &str) {
    let loaded = match load_links(&f.files) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(
                reason = why,
                "the files are refused; every link keeps serving as it was:\n{e}"
            );
            return;
        }
    };
    let plans: Vec<LinkPlan> = loaded.into_iter().map(|(_, p)| p).collect();
    // In Compose a link added by the edit needs its volume at its path, as at start.
    let compose = crate::links::compose_mode(f.containers.is_some(), f.store.mode());
    if compose {
        let unmounted = crate::links::unmounted_volumes(f.store.base_path(), &plans);
        if !unmounted.is_empty() {
            tracing::error!(
                reason = why,
                "the files are refused; every link keeps serving as it was:\n{}",
                ipclink_core::Problems(unmounted)
            );
            return;
        }
    }
    if f.strict {
        for plan in &plans {
            if let Err(e) = f.store.check(plan) {
                tracing::error!(reason = why, namespace = %plan.namespace, link = %plan.name, "--strict: the edit is not applied: {e}");
                return;
            }
        }
    }
    let mut members: Box<dyn Members> = match &f.containers {
        Some(names) => Box::new(ContainerProcesses::new(names.clone(), true)),
        None => Box::new(AllProcesses),
    };
    let mut served = f.served.lock().unwrap_or_else(|p| p.into_inner());
    for plan in &plans {
        match apply_link(&f.store, plan, &mut *members, compose) {
            Ok(o) => tracing::info!(
                reason = why,
                namespace = %plan.namespace,
                link = %plan.name,
                created = o.created.len(),
                changed = o.changed.len(),
                removed = o.removed.len(),
                pending = o.pending.len(),
                "link applied"
            ),
            Err(e) => {
                tracing::error!(reason = why, namespace = %plan.namespace, link = %plan.name, "cannot apply the edit: {e}")
            }
        }
        match served.iter_mut().find(|p| p.key() == plan.key()) {
            Some(p) => *p = plan.clone(),
            None => served.push(plan.clone()),
        }
    }
    for gone in served
        .iter()
        .filter(|s| !plans.iter().any(|p| p.key() == s.key()))
    {
        tracing::warn!(namespace = %gone.namespace, link = %gone.name, "no longer in the files: left in place until `up` stops");
    }
    match open_probes(&f.store, &served) {
        Ok(probes) => f
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_probes(probes),
        Err(e) => tracing::error!("cannot probe the links again: {e}"),
    }
}
