//! `ipclink-sidecar volume-plugin`: Docker's and podman's volume plugin protocol.

use std::sync::{Arc, Mutex};

use ipclink_core::probe::holders::ContainerNames;
use ipclink_runtime::Shutdown;
use ipclink_runtime::http::{Limits, serve};
use ipclink_runtime::links::{SharedLinks, router};
use tokio::net::TcpListener;

use super::{check_listen, install_shutdown};
use crate::cli::PluginArgs;
use crate::links::storage_mode;
use crate::{Error, discover, plugin};

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
    // The socket first: a second plugin, or a socket passed for another path, is
    // refused before anything under the root is touched.
    let bound = plugin::bind_socket(&args.socket)?;
    let link_dir = plugin::LinkDir::new(args.link_dir.clone());
    let names: ContainerNames = Arc::default();
    let plugin = match plugin::Plugin::open(
        &args.root,
        mode,
        links.clone(),
        names.clone(),
        args.fifo_open_probe,
        &link_dir,
    ) {
        Ok(p) => p,
        Err(e) => {
            bound.remove_own(&args.socket);
            return Err(e);
        }
    };
    let spec = match &args.docker_spec {
        Some(file) => match write_spec(file, &args.socket) {
            Ok(body) => Some((file.clone(), body)),
            Err(e) => {
                bound.remove_own(&args.socket);
                return Err(e);
            }
        },
        None => None,
    };
    tracing::info!(
        socket = %args.socket.display(),
        activated = bound.activated,
        root = %args.root.display(),
        link_dir = %args.link_dir.display(),
        volumes = plugin.volumes().len(),
        "volume plugin ready"
    );
    let plugin = Arc::new(Mutex::new(plugin));
    // An empty --engine (the managed plugin's setting cleared) turns discovery off.
    if let Some(socket) = args.engine.clone().filter(|s| !s.is_empty()) {
        let watched = plugin.clone();
        tokio::spawn(discover::run(
            socket,
            discover::Scope::Plugin(Arc::new(move || {
                watched.lock().unwrap_or_else(|p| p.into_inner()).watched()
            })),
            std::time::Duration::from_secs(args.discover_interval_seconds.max(1)),
            discover::publish_to(names, links.clone()),
            discover::fault_to(links.clone()),
            shutdown.clone(),
        ));
    }
    let metrics_task = metrics.map(|listener| {
        tokio::spawn(serve(
            listener,
            router(links),
            Limits::default(),
            shutdown.signalled(),
        ))
    });
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
    // Under socket activation the manager keeps the socket answering, and the spec with
    // it. Only the spec as this process wrote it goes: another plugin may have taken the
    // file over for its own socket since.
    if !bound.activated {
        if let Some((file, body)) = &spec
            && std::fs::read_to_string(file).is_ok_and(|now| now == *body)
        {
            let _ = std::fs::remove_file(file);
        }
        let _ = std::fs::remove_file(&args.socket);
    }
    drop(bound.lock);
    served.map_err(|source| Error::Io {
        what: "serve".into(),
        source,
    })
}

/// Writes Docker's plugin spec `spec` (`unix://SOCKET`, the socket's absolute path) in
/// one step (a temporary file renamed over it), so that dockerd never reads half of it;
/// returns what it wrote.
fn write_spec(spec: &std::path::Path, socket: &std::path::Path) -> Result<String, Error> {
    let io = |source| Error::Io {
        what: format!("write the Docker plugin spec {}", spec.display()),
        source,
    };
    let dir = spec
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = spec
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    let dir_fd = std::fs::File::open(dir).map_err(io)?;
    let socket = std::path::absolute(socket).map_err(io)?;
    let body = format!("unix://{}\n", socket.display());
    ipclink_core::fs::write_atomic_at(std::os::fd::AsFd::as_fd(&dir_fd), name, body.as_bytes())
        .map_err(io)?;
    Ok(body)
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
