//! Links made for a test: materialized in a store (and removed again), or served on a
//! links endpoint as the sidecar serves them.

use std::path::Path;

/// Tears a materialized link down when dropped, so a failing test leaves no mount behind.
#[derive(Debug)]
pub struct LinkGuard<'a> {
    /// The store holding the link.
    pub store: &'a ipclink_core::Store,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl Drop for LinkGuard<'_> {
    fn drop(&mut self) {
        let _ = self.store.teardown(&self.namespace, &self.name);
    }
}

/// Materializes `yaml`'s single link in `store`; the guard removes it again.
pub fn materialize<'a>(
    store: &'a ipclink_core::Store,
    yaml: &str,
) -> (ipclink_core::LinkPlan, LinkGuard<'a>) {
    let link = &ipclink_core::parse_links("test", yaml).expect("parse")[0];
    let plan = ipclink_core::validate(link).expect("valid");
    store.materialize(&plan).expect("materialize");
    let guard = LinkGuard {
        store,
        namespace: plan.namespace.clone(),
        name: plan.name.clone(),
    };
    (plan, guard)
}

/// Serves the runtime's links endpoint (`/metrics`, `/v1/links`, as the sidecar serves
/// them) over the links of `yamls`, materialized in a plain directory under `root`, on a
/// thread of its own; returns its port. The endpoint lives until the process ends.
pub fn serve_links(root: &Path, yamls: &[&str]) -> u16 {
    let store = ipclink_core::Store::open(root, ipclink_core::StorageMode::PlainDir)
        .expect("open the links directory");
    for yaml in yamls {
        for link in ipclink_core::parse_links("links", yaml).expect("parse") {
            let plan = ipclink_core::validate(&link).expect("valid");
            store.materialize(&plan).expect("materialize");
        }
    }
    serve_records(root).0
}

/// Serves `/v1/links` (as the sidecar and the node plugins do) over every link recorded
/// under `root` (a plain directory), as each record says it serves (with what is
/// pending); returns the port and the probes, which [`probe_records`] renews.
pub fn serve_records(root: &Path) -> (u16, ipclink_runtime::links::SharedLinks) {
    use std::sync::{Arc, Mutex};
    let store = ipclink_core::Store::open(root, ipclink_core::StorageMode::PlainDir)
        .expect("open the links directory");
    let links = Arc::new(Mutex::new(ipclink_runtime::links::LinkSet::new(
        probe_records(&store),
    )));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let served = links.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            listener.set_nonblocking(true).expect("nonblocking");
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _keep = store;
            let _ = ipclink_runtime::http::serve(
                listener,
                ipclink_runtime::links::router(served),
                ipclink_runtime::http::Limits::default(),
                std::future::pending::<()>(),
            )
            .await;
        });
    });
    (port, links)
}

/// A probe of every link recorded in `store`.
pub fn probe_records(store: &ipclink_core::Store) -> Vec<ipclink_core::probe::LinkProbe> {
    store
        .records()
        .0
        .iter()
        .map(|r| ipclink_core::probe::LinkProbe::of_record(store, r).expect("probe"))
        .collect()
}
