//! The links of the files given: loaded and validated, materialized in a store, and
//! opened for probing.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use ipclink_core::probe::LinkProbe;
use ipclink_core::probe::holders::{AllProcesses, Members, containers_mounting, link_held};
use ipclink_core::sample::LinkSample;
use ipclink_core::{LinkPlan, MaterializeError, Problem, Problems, StorageMode, Store, load_plans};

use crate::Error;
use crate::cli::Storage;

/// Reads and validates the files; every problem of every file, or the plans.
pub fn load_files(files: &[PathBuf]) -> Result<Vec<LinkPlan>, Error> {
    load_links(files).map(|v| v.into_iter().map(|(_, plan)| plan).collect())
}

/// [`load_files`], keeping each link with its plan.
pub fn load_links(files: &[PathBuf]) -> Result<Vec<(ipclink_core::IpcLink, LinkPlan)>, Error> {
    let mut texts = Vec::new();
    let mut problems = Vec::new();
    for f in files {
        match std::fs::read_to_string(f) {
            Ok(t) => texts.push((f.display().to_string(), t)),
            Err(e) => problems.push(Problem::new(
                f.display().to_string(),
                format!("cannot read: {e}"),
            )),
        }
    }
    if !problems.is_empty() {
        return Err(Error::Invalid(Problems(problems)));
    }
    load_plans(&texts).map_err(Error::Invalid)
}

pub(crate) fn storage_mode(choice: Option<Storage>) -> StorageMode {
    match choice {
        Some(Storage::Tmpfs) => StorageMode::Tmpfs,
        Some(Storage::Dir) => StorageMode::PlainDir,
        None => StorageMode::default_for_user(),
    }
}

/// A store opened for `up`, with its links materialized.
#[derive(Debug)]
pub struct Materialized {
    /// The base directory.
    pub store: Store,
    /// The links as written, in file order (what discovery checks members against).
    pub links: Vec<ipclink_core::IpcLink>,
    /// Their plans, in the same order.
    pub plans: Vec<LinkPlan>,
}

/// Validates, then materializes every link (see [`materialize_links`]). On a problem
/// nothing is created (not even the root directory, for invalid files).
pub fn materialize_files(
    files: &[PathBuf],
    root: &Path,
    storage: Option<Storage>,
    strict: bool,
) -> Result<Materialized, Error> {
    materialize_links(load_links(files)?, root, storage, strict, false)
}

/// Whether `up` runs as a Compose sidecar: discovery on (`--engine`) and each link's
/// directory a volume the members mount (`--storage dir`).
pub(crate) fn compose_mode(engine: bool, mode: StorageMode) -> bool {
    engine && mode == StorageMode::PlainDir
}

/// Materializes links already loaded and validated. A link that exists already is made
/// to serve its spec by the live rule: what can change under members changes, the rest
/// waits (logged) until no process holds the link. With `strict`, any difference from
/// an existing link is refused first, and nothing at all is changed.
pub fn materialize_links(
    loaded: Vec<(ipclink_core::IpcLink, LinkPlan)>,
    root: &Path,
    storage: Option<Storage>,
    strict: bool,
    compose: bool,
) -> Result<Materialized, Error> {
    let (links, plans): (Vec<_>, Vec<_>) = loaded.into_iter().unzip();
    let store = Store::open(root, storage_mode(storage))?;
    if !store.applies_owner() {
        tracing::warn!(
            "not root: object owners from the spec are not applied; objects belong to this user"
        );
    }
    if strict {
        for plan in &plans {
            store.check(plan)?;
        }
    }
    // Links this run makes from nothing are removed again if a later step fails; links
    // that existed before are never touched by that rollback.
    let mut fresh: Vec<&LinkPlan> = Vec::new();
    for plan in &plans {
        let existed = store.open_link(&plan.namespace, &plan.name).is_ok();
        if !existed {
            fresh.push(plan);
        }
        let outcome = match apply_link(&store, plan, &mut AllProcesses, compose) {
            Ok(o) => o,
            Err(e) => {
                for p in &fresh {
                    if let Err(t) = store.teardown(&p.namespace, &p.name) {
                        tracing::error!(error = %t, "rollback teardown failed");
                    }
                }
                return Err(e.into());
            }
        };
        tracing::info!(
            namespace = %plan.namespace,
            link = %plan.name,
            path = %store.link_path(&plan.namespace, &plan.name).display(),
            created = outcome.created.len(),
            kept = outcome.kept.len(),
            tmpfs = outcome.mounted,
            "link materialized"
        );
    }
    Ok(Materialized {
        store,
        links,
        plans,
    })
}

/// Makes one link serve `plan`: pending changes are made when no process among
/// `members` holds the link (unknown counts as held) and, in Compose (`compose`), no
/// other container has its volume mounted: what members left there is kept while one
/// does (the persistence rule).
pub(crate) fn apply_link(
    store: &Store,
    plan: &LinkPlan,
    members: &mut dyn Members,
    compose: bool,
) -> Result<ipclink_core::Outcome, MaterializeError> {
    let exclusive = match store.open_link(&plan.namespace, &plan.name) {
        Err(_) => true,
        Ok(_) => {
            link_held(store, plan, members) == Some(false)
                && (!compose
                    || containers_mounting(&store.link_path(&plan.namespace, &plan.name))
                        .is_ok_and(|users| users.is_empty()))
        }
    };
    let outcome = store.apply(plan, &ipclink_core::InProcess, exclusive)?;
    outcome.log(plan);
    Ok(outcome)
}

/// In a plain directory the size limit is whatever the directory's filesystem enforces:
/// nothing, or a volume's own tmpfs (Compose). Says which, per link.
pub(crate) fn warn_unenforced_limits(samples: &[LinkSample], plans: &[LinkPlan]) {
    use ipclink_core::model::quantity::format_bytes;
    for (s, plan) in samples.iter().zip(plans) {
        let (namespace, link) = (&*s.namespace, &*s.name);
        if !s.size_limit_enforced {
            tracing::warn!(namespace, link, path = %s.path, "a plain directory: sizeLimit is NOT enforced (run as root for one tmpfs per link, or mount a tmpfs volume there)");
        } else if s.limit_bytes > plan.size_limit {
            let plan_limit = plan.size_limit;
            tracing::warn!(
                namespace,
                link,
                tmpfs = %format_bytes(s.limit_bytes),
                size_limit = %format_bytes(plan_limit),
                "the link is a tmpfs larger than its sizeLimit: give the volume size={} to enforce it",
                format_bytes(plan_limit)
            );
        } else {
            tracing::info!(namespace, link, tmpfs = %format_bytes(s.limit_bytes), "the link is a tmpfs of its own (a volume); its size is the limit");
        }
    }
}

/// Opens a probe for every plan's link, as its record says it serves (with what is
/// pending).
pub fn open_probes(store: &Store, plans: &[LinkPlan]) -> Result<Vec<LinkProbe>, Error> {
    plans
        .iter()
        .map(|p| {
            match store.record(&p.namespace, &p.name) {
                Some(r) => LinkProbe::of_record(store, &r),
                None => LinkProbe::open(store, p),
            }
            .map_err(|errno| Error::Io {
                what: format!("open {}", store.link_path(&p.namespace, &p.name).display()),
                source: std::io::Error::from_raw_os_error(errno as i32),
            })
        })
        .collect()
}

/// In Compose each link's volume is mounted at the link's own path in the sidecar
/// (`ROOT/<namespace>/<name>`); a link whose path is not a mount point would be made in a
/// directory no member sees (or inside a volume mounted higher up). The problem naming
/// the fix for each such link of `plans`, none when all are mounted.
pub(crate) fn unmounted_volumes(root: &Path, plans: &[LinkPlan]) -> Vec<Problem> {
    plans
        .iter()
        .filter_map(|p| {
            let path = root.join(&p.namespace).join(&p.name);
            (!mounted_at(&path)).then(|| {
                Problem::new(
                    format!("link {}/{}", p.namespace, p.name),
                    format!(
                        "no volume is mounted at {0}, where this link is made: mount the members' volume there in this container (Compose: `- VOLUME:{0}`; the path is ROOT/<metadata.namespace>/<metadata.name>), or change the link's namespace/name to where it is mounted",
                        path.display()
                    ),
                )
            })
        })
        .collect()
}

/// Why a link counts as in use: what [`link_in_use`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InUse {
    /// Containers other than this one have its volume mounted (12-digit ids).
    Mounted(Vec<String>),
    /// A process holds one of its objects.
    Held,
    /// Who uses it cannot be known, and why.
    Unknown(String),
}

impl std::fmt::Display for InUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InUse::Mounted(c) => write!(
                f,
                "container(s) {} have its volume mounted; stop them first",
                c.join(", ")
            ),
            InUse::Held => f.write_str("a process holds one of its objects; stop it first"),
            InUse::Unknown(why) => write!(f, "cannot tell who uses it: {why}"),
        }
    }
}

/// Whether `plan`'s link is in use: a container other than this one has its volume
/// mounted, or a process holds one of its objects (ipclink's own probes aside), or that
/// cannot be known. A link in use is never reset.
pub(crate) fn link_in_use(store: &Store, plan: &LinkPlan) -> Option<InUse> {
    match containers_mounting(&store.link_path(&plan.namespace, &plan.name)) {
        Ok(c) if !c.is_empty() => return Some(InUse::Mounted(c)),
        Ok(_) => {}
        Err(why) => return Some(InUse::Unknown(why)),
    }
    match link_held(store, plan, &mut AllProcesses) {
        Some(false) => None,
        Some(true) => Some(InUse::Held),
        None => Some(InUse::Unknown(
            "the processes that may hold its objects cannot all be read".into(),
        )),
    }
}

/// The persistence rule in Compose: a link whose volume no other container uses starts
/// as declared, whatever members left in it (as a fresh tmpfs volume does); one in use,
/// or one whose users cannot be seen, is kept as it is, and so is one that cannot be
/// reset (logged: the sidecar serves it as it is).
pub(crate) fn reset_unused(root: &Path, plans: &[LinkPlan]) -> Result<(), Error> {
    let store = Store::open(root, StorageMode::PlainDir)?;
    for plan in plans {
        let key = plan.key();
        let Ok(link) = store.open_link(&plan.namespace, &plan.name) else {
            continue;
        };
        if ipclink_core::fs::dir_is_empty(link.as_fd()).unwrap_or(false) {
            continue; // a new volume
        }
        match link_in_use(&store, plan) {
            None => match store.reset(plan) {
                Ok(_) => tracing::info!(
                    link = %key,
                    "no other container uses the volume: the link starts as declared"
                ),
                Err(e) => {
                    tracing::error!(link = %key, "cannot reset the link; it is kept as it is: {e}")
                }
            },
            Some(why @ InUse::Unknown(_)) => {
                tracing::warn!(link = %key, "the link is kept as it is: {why}")
            }
            Some(why) => {
                tracing::info!(link = %key, "the volume is in use, the link is kept as it is: {why}")
            }
        }
    }
    Ok(())
}

/// Whether a mount point of this mount namespace is exactly at `path`.
fn mounted_at(path: &Path) -> bool {
    let want = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|p| Path::new(&ipclink_core::fs::unescape_mountinfo(p)) == want)
}
