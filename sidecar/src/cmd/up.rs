//! `ipclink-sidecar up`: materializes the links of the files, serves their metrics,
//! follows edits, and tears them down on SIGTERM or Ctrl-C.

use std::sync::{Arc, Mutex};

use ipclink_core::StorageMode;
use ipclink_core::probe::Observer;
use ipclink_core::probe::holders::{AllProcesses, ContainerProcesses};
use ipclink_runtime::http::{Limits, serve};
use ipclink_runtime::links::{LinkSet, SharedLinks, router};
use tokio::net::TcpListener;

use super::{check_listen, install_shutdown};
use crate::Error;
use crate::cli::{UpArgs, default_root};
use crate::links::{
    compose_mode, load_links, materialize_links, open_probes, reset_unused, storage_mode,
    unmounted_volumes, warn_unenforced_limits,
};
use crate::{discover, reload};

/// `ipclink-sidecar up`.
pub async fn up(args: UpArgs) -> Result<(), Error> {
    let root = args.root.clone().unwrap_or_else(default_root);
    check_listen(args.listen, args.insecure_listen)?;
    let shutdown = install_shutdown()?;
    // Validate before binding, bind before creating anything: a bad file or a busy port
    // leaves the machine as it was.
    let loaded = load_links(&args.files)?;
    // In Compose (discovery on, the volume is the storage) each link's volume must be
    // mounted at the link's own path: refused before anything is made.
    let compose = compose_mode(args.engine.is_some(), storage_mode(args.storage));
    if compose {
        let plans: Vec<_> = loaded.iter().map(|(_, p)| p.clone()).collect();
        let unmounted = unmounted_volumes(&root, &plans);
        if !unmounted.is_empty() {
            return Err(Error::Invalid(ipclink_core::Problems(unmounted)));
        }
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Io {
            what: format!("listen on {}", args.listen),
            source,
        })?;
    if compose {
        let plans: Vec<_> = loaded.iter().map(|(_, p)| p.clone()).collect();
        reset_unused(&root, &plans)?;
    }
    let m = materialize_links(loaded, &root, args.storage, args.strict, compose)?;
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
        let links: Vec<_> = m
            .links
            .iter()
            .zip(&m.plans)
            .map(|(link, plan)| {
                let path = store.link_path(&plan.namespace, &plan.name);
                (link.clone(), plan.clone(), path)
            })
            .collect();
        let scope = discover::Scope::Sidecar {
            container: args.container.clone().unwrap_or_default(),
            links,
        };
        tokio::spawn(discover::run(
            socket.clone(),
            scope,
            std::time::Duration::from_secs(args.discover_interval_seconds.max(1)),
            discover::publish_to(names.clone(), state.clone()),
            discover::fault_to(state.clone()),
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
