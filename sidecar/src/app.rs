//! The HTTP face of a running sidecar: `/metrics`, `/v1/links`, `/healthz`, `/readyz`.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use ipclink_core::metrics::{render_channels, render_gauge};
use ipclink_core::probe::{LinkProbe, LinkSample, SocketTable};
use serde::Serialize;

use crate::discover::MemberReport;

/// The links a sidecar watches, with their probes and metric families.
#[derive(Debug)]
pub struct LinkSet {
    probes: Vec<LinkProbe>,
    members: Vec<MemberReport>,
}

/// Shared handle to the link set.
pub type Shared = Arc<Mutex<LinkSet>>;

/// Body of `/v1/links`.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct LinksReport {
    /// Every link, in (namespace, name) order.
    pub links: Vec<LinkSample>,
    /// Containers found mounting the links (Compose discovery), with their problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberReport>,
}

impl LinkSet {
    /// A set over already-open probes.
    pub fn new(probes: Vec<LinkProbe>) -> Self {
        LinkSet {
            probes,
            members: Vec::new(),
        }
    }

    /// Replaces the discovered members.
    pub fn set_members(&mut self, members: Vec<MemberReport>) {
        self.members = members;
    }

    /// Samples every link and adds the discovered members: the `/v1/links` body.
    pub fn report(&mut self) -> LinksReport {
        LinksReport {
            links: self.sample(),
            members: self.members.clone(),
        }
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
        let info: Vec<_> = self
            .members
            .iter()
            .map(|m| {
                let labels = vec![
                    ("namespace", m.namespace.as_str()),
                    ("link", m.link.as_str()),
                    ("service", m.service.as_str()),
                    ("container", m.container.as_str()),
                    ("user", m.user.as_str()),
                ];
                (labels, 1)
            })
            .collect();
        render_gauge(
            &mut out,
            "ipclink_member_info",
            "Containers that mount a link, by Compose service; always 1.",
            &info,
        );
        let denied: Vec<_> = self
            .members
            .iter()
            .flat_map(|m| {
                m.denied.iter().map(move |(channel, access)| {
                    let labels = vec![
                        ("namespace", m.namespace.as_str()),
                        ("link", m.link.as_str()),
                        ("service", m.service.as_str()),
                        ("container", m.container.as_str()),
                        ("channel", channel.as_str()),
                        ("access", access.as_str()),
                    ];
                    (labels, 1)
                })
            })
            .collect();
        render_gauge(
            &mut out,
            "ipclink_member_denied",
            "Channels and semaphores a member cannot use as the link declares (access missing); always 1.",
            &denied,
        );
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
    match with_links(state, LinkSet::report).await {
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
