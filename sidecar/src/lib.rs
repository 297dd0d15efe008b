//! ipclink-sidecar: materializes IpcLinks on this machine and serves their depths.

pub mod cli;
pub mod discover;
pub mod plugin;
mod reload;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ipclink_core::probe::holders::{AllProcesses, ContainerProcesses, Members, link_held};
use ipclink_core::probe::{LinkProbe, Observer};
use ipclink_core::sample::LinkSample;
use ipclink_core::{LinkPlan, MaterializeError, Problem, Problems, StorageMode, Store, load_plans};
use ipclink_runtime::Shutdown;
use ipclink_runtime::http::{Limits, serve};
use ipclink_runtime::links::{LinkSet, SharedLinks, router};
use tokio::net::TcpListener;

use crate::cli::{PluginArgs, Storage, UpArgs, default_root};

/// Why a command failed; [`Error::exit_code`] tells the shell.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is wrong; nothing was changed.
    #[error("{0}")]
    Invalid(Problems),
    /// The links on disk differ from the files; nothing was changed.
    #[error(transparent)]
    Materialize(#[from] MaterializeError),
    /// The endpoint could not be served.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl Error {
    /// 2 for input that was refused with nothing changed, 1 for anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Invalid(_) | Error::Materialize(MaterializeError::Conflicts(_)) => 2,
            _ => 1,
        }
    }
}

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

fn storage_mode(choice: Option<Storage>) -> StorageMode {
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
    materialize_links(load_links(files)?, root, storage, strict)
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
        let outcome = match apply_link(&store, plan, &mut AllProcesses) {
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
/// `members` holds the link (unknown counts as held).
fn apply_link(
    store: &Store,
    plan: &LinkPlan,
    members: &mut dyn Members,
) -> Result<ipclink_core::Outcome, MaterializeError> {
    let exclusive = match store.open_link(&plan.namespace, &plan.name) {
        Err(_) => true,
        Ok(_) => link_held(store, plan, members) == Some(false),
    };
    let outcome = store.apply(plan, &ipclink_core::InProcess, exclusive)?;
    outcome.log(plan);
    Ok(outcome)
}

/// In a plain directory the size limit is whatever the directory's filesystem enforces:
/// nothing, or a volume's own tmpfs (Compose). Says which, per link.
fn warn_unenforced_limits(samples: &[LinkSample], plans: &[LinkPlan]) {
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

/// Refuses to serve unauthenticated metrics on `listen` off loopback unless `insecure`.
fn check_listen(listen: SocketAddr, insecure: bool) -> Result<(), Error> {
    if listen.ip().is_loopback() || insecure {
        return Ok(());
    }
    Err(Error::Invalid(Problems(vec![Problem::new(
        "--listen",
        format!(
            "{listen} is not a loopback address, and /metrics and /v1/links are served there without authentication; use 127.0.0.1, or add --insecure-listen to let anyone who can connect read them"
        ),
    )])))
}

/// `ipclink-sidecar up`.
pub async fn up(args: UpArgs) -> Result<(), Error> {
    let root = args.root.clone().unwrap_or_else(default_root);
    check_listen(args.listen, args.insecure_listen)?;
    let shutdown = install_shutdown()?;
    // Validate before binding, bind before creating anything: a bad file or a busy port
    // leaves the machine as it was.
    let loaded = load_links(&args.files)?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Io {
            what: format!("listen on {}", args.listen),
            source,
        })?;
    let m = materialize_links(loaded, &root, args.storage, args.strict)?;
    // Who holds what: in Compose the member containers' processes (found by discovery,
    // visible with the host's pid namespace), on a host every process.
    let names = Arc::new(Mutex::new(None));
    let observer = match &args.engine {
        Some(_) => Observer::new(
            Box::new(ContainerProcesses::new(names.clone(), true)),
            true,
            args.fifo_open_probe,
        ),
        // Every process's network namespace too: a member may bind a socket channel's
        // listener from its own (a container), and its backlog is read there.
        None => Observer::new(Box::new(AllProcesses), true, args.fifo_open_probe),
    };
    let mut set = LinkSet::new(open_probes(&m.store, &m.plans)?).observed_by(observer);
    if m.store.mode() == StorageMode::PlainDir {
        warn_unenforced_limits(&set.sample(), &m.plans);
    }
    let state: SharedLinks = Arc::new(Mutex::new(set));
    let store = Arc::new(m.store);
    let all_served = Arc::new(Mutex::new(m.plans.clone()));
    reload::spawn(
        reload::Follow {
            files: args.files.clone(),
            store: store.clone(),
            served: all_served.clone(),
            links: state.clone(),
            strict: args.strict,
            containers: args.engine.as_ref().map(|_| names.clone()),
        },
        shutdown.clone(),
    )
    .map_err(|source| Error::Io {
        what: "install the SIGHUP handler".into(),
        source,
    })?;
    if let Some(socket) = &args.engine {
        let engine = discover::Engine {
            socket: socket.clone(),
            container: args.container.clone().unwrap_or_default(),
        };
        let links: Vec<_> = m
            .links
            .iter()
            .zip(&m.plans)
            .map(|(link, plan)| {
                let path = store.link_path(&plan.namespace, &plan.name);
                (link.clone(), plan.clone(), path)
            })
            .collect();
        let shared = state.clone();
        tokio::spawn(discover::run(
            engine,
            links,
            std::time::Duration::from_secs(args.discover_interval_seconds.max(1)),
            move |members| {
                // Stopped members hold nothing: only running (or paused) ones are
                // looked at, so a FIFO both ends of which have exited reads empty.
                *names.lock().unwrap_or_else(|p| p.into_inner()) = Some(
                    members
                        .iter()
                        .filter(|m| matches!(m.state.as_str(), "running" | "paused"))
                        .map(|m| (m.id.clone(), m.container.clone()))
                        .collect(),
                );
                shared
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .set_members(members)
            },
            shutdown.clone(),
        ));
    }
    tracing::info!(
        links = m.plans.len(),
        root = %root.display(),
        metrics = %format!("http://{}/metrics", args.listen),
        "ready"
    );
    let served = serve(
        listener,
        router(state),
        Limits::default(),
        shutdown.signalled(),
    )
    .await;
    if args.keep {
        tracing::info!(root = %root.display(), "--keep: links left in place");
    } else {
        for plan in all_served.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if let Err(e) = store.teardown(&plan.namespace, &plan.name) {
                tracing::error!(namespace = %plan.namespace, link = %plan.name, error = %e, "teardown failed");
            }
        }
        tracing::info!("links torn down");
    }
    served.map_err(|source| Error::Io {
        what: "serve".into(),
        source,
    })
}

/// `ipclink-sidecar volume-plugin`: serves the plugin protocol until SIGTERM or Ctrl-C.
/// Volumes stay in place when it stops: containers keep using them, and the next start
/// picks them up from the state file.
pub async fn volume_plugin(args: PluginArgs) -> Result<(), Error> {
    if let Some(addr) = args.listen {
        check_listen(addr, args.insecure_listen)?;
    }
    let shutdown = install_shutdown()?;
    let metrics = match args.listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| Error::Io {
            what: format!("listen on {addr}"),
            source,
        })?),
        None => None,
    };
    let links: SharedLinks = Arc::default();
    let mode = storage_mode(args.storage);
    let plugin = plugin::Plugin::open(&args.root, mode, links.clone(), args.fifo_open_probe)?;
    let bound = plugin::bind_socket(&args.socket)?;
    tracing::info!(
        socket = %args.socket.display(),
        root = %args.root.display(),
        link_dir = %args.link_dir.display(),
        volumes = plugin.volumes().len(),
        "volume plugin ready"
    );
    let metrics_task = metrics.map(|listener| {
        tokio::spawn(serve(
            listener,
            router(links),
            Limits::default(),
            shutdown.signalled(),
        ))
    });
    let plugin = Arc::new(Mutex::new(plugin));
    let link_dir = plugin::LinkDir::new(args.link_dir.clone());
    if args.apply_interval_seconds > 0 {
        tokio::spawn(follow_link_files(
            plugin.clone(),
            link_dir.clone(),
            std::time::Duration::from_secs(args.apply_interval_seconds),
            shutdown.clone(),
        ));
    }
    let served = serve(
        bound.listener,
        plugin::router(plugin, link_dir),
        Limits::default(),
        shutdown.signalled(),
    )
    .await;
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    // Removed while the lock is still held: no other plugin can have bound it since.
    let _ = std::fs::remove_file(&args.socket);
    drop(bound.lock);
    served.map_err(|source| Error::Io {
        what: "serve".into(),
        source,
    })
}

/// Reads the link files of the volumes every `interval` and applies those that changed
/// since the last read (see [`plugin::Plugin::apply_file`]).
async fn follow_link_files(
    plugin: plugin::SharedPlugin,
    dir: plugin::LinkDir,
    interval: std::time::Duration,
    shutdown: Shutdown,
) {
    let mut last: std::collections::HashMap<String, String> = Default::default();
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        let (p, d) = (plugin.clone(), dir.clone());
        last = tokio::task::spawn_blocking(move || {
            let files = p.lock().unwrap_or_else(|e| e.into_inner()).link_files();
            let mut seen = std::collections::HashMap::new();
            for (volume, file) in files {
                let read = d.read(&file);
                let shown = format!("{read:?}");
                if last.get(&volume) != Some(&shown) {
                    let mut locked = p.lock().unwrap_or_else(|e| e.into_inner());
                    if let Err(r) = locked.apply_file(&volume, read) {
                        tracing::error!(volume, "cannot apply the link file: {}", r.message);
                    }
                }
                seen.insert(volume, shown);
            }
            seen
        })
        .await
        .unwrap_or_default();
    }
}

fn install_shutdown() -> Result<Shutdown, Error> {
    Shutdown::install().map_err(|source| Error::Io {
        what: "install signal handlers".into(),
        source,
    })
}

/// `ipclink-sidecar ready`: asks a running sidecar's `/readyz`.
pub fn ready(listen: std::net::SocketAddr) -> Result<(), Error> {
    use std::io::{Read, Write};
    let io = |what: &str| {
        let what = format!("{what} http://{listen}/readyz");
        move |source| Error::Io { what, source }
    };
    let timeout = std::time::Duration::from_secs(3);
    let mut stream =
        std::net::TcpStream::connect_timeout(&listen, timeout).map_err(io("connect to"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io("set up"))?;
    stream
        .write_all(
            format!("GET /readyz HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .map_err(io("ask"))?;
    let mut answer = Vec::new();
    stream
        .take(64 * 1024)
        .read_to_end(&mut answer)
        .map_err(io("read"))?;
    let text = String::from_utf8_lossy(&answer);
    if text.starts_with("HTTP/1.1 200") {
        return Ok(());
    }
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    Err(Error::Io {
        what: format!(
            "not ready: {}",
            if body.is_empty() {
                text.lines().next().unwrap_or("")
            } else {
                body
            }
        ),
        source: std::io::Error::other("readyz"),
    })
}

/// `ipclink-sidecar status`: samples of every recorded link under `root`.
pub fn status(root: &Path) -> Result<Vec<LinkSample>, Error> {
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let store = Store::open(root, StorageMode::default_for_user())?;
    let (records, bad) = store.records();
    for path in bad {
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
