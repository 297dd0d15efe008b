//! The HTTP face of a running sidecar: `/metrics`, `/v1/links`, `/healthz`, `/readyz`.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use ipclink_core::metrics::render_channels;
use ipclink_core::probe::{LinkProbe, LinkSample, SocketTable};
use serde::Serialize;

/// The links a sidecar watches, with their probes and metric families.
#[derive(Debug)]
pub struct LinkSet {
    probes: Vec<LinkProbe>,
}

/// Shared handle to the link set.
pub type Shared = Arc<Mutex<LinkSet>>;

/// Body of `/v1/links`.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct LinksReport {
    /// Every link, in (namespace, name) order.
    pub links: Vec<LinkSample>,
}

impl LinkSet {
    /// A set over already-open probes.
    pub fn new(probes: Vec<LinkProbe>) -> Self {
        LinkSet { probes }
    }

    /// Observes every link once. Socket queues come from one netlink dump, taken only
    /// when some link has a socket channel.
    pub fn sample(&mut self) -> Vec<LinkSample> {
        let sockets = if self.probes.iter().any(LinkProbe::has_sockets) {
            SocketTable::dump().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "unix socket diagnostics unavailable; socket depths read as 0");
                SocketTable::default()
            })
        } else {
            SocketTable::default()
        };
        self.probes.iter_mut().map(|p| p.sample(&sockets)).collect()
    }

    /// Samples and renders the Prometheus text exposition.
    pub fn render_metrics(&mut self) -> String {
        let samples = self.sample();
        let channels: usize = samples
            .iter()
            .map(|s| s.channels.len() + s.semaphores.len())
            .sum();
        let mut out = String::with_capacity(4096 + channels * 6 * 120);
        render_channels(&samples, &[], &mut out);
        out
    }

    /// Links some of whose declared objects are missing, as `namespace/name`.
    pub fn incomplete(&self) -> Vec<String> {
        self.probes
            .iter()
            .filter(|p| !p.all_present())
            .map(|p| {
                let (ns, name) = p.key();
                format!("{ns}/{name}")
            })
            .collect()
    }
}

/// The router; state is shared with whoever owns the links.
pub fn app(state: Shared) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/links", get(links))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Runs blocking probe work off the async workers.
async fn with_links<T: Send + 'static>(
    state: Shared,
    f: impl FnOnce(&mut LinkSet) -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(move || {
        let mut set = state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut set)
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "probe task failed");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({"Err": "probe failed"})),
        )
            .into_response()
    })
}

async fn metrics(State(state): State<Shared>) -> Response {
    match with_links(state, LinkSet::render_metrics).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn links(State(state): State<Shared>) -> Response {
    match with_links(state, |s| LinksReport { links: s.sample() }).await {
        Ok(report) => Json(report).into_response(),
        Err(r) => r,
    }
}

async fn readyz(State(state): State<Shared>) -> Response {
    match with_links(state, |s| s.incomplete()).await {
        Ok(missing) if missing.is_empty() => "ready\n".into_response(),
        Ok(missing) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"Err": format!("objects missing in {}", missing.join(", "))})),
        )
            .into_response(),
        Err(r) => r,
    }
}
