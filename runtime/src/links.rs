//! The HTTP face of every ipclink process: `/metrics`, `/v1/links`, `/healthz` and
//! `/readyz`, over whatever the process exposes ([`Exposition`]), and [`LinkSet`], the
//! exposition of a set of materialized links (the sidecar, the volume plugin, the CSI
//! node plugin).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use ipclink_core::metrics::{render_channels, render_gauge};
use ipclink_core::probe::{LinkProbe, Observer};
use ipclink_core::report::{LinksReport, MemberReport, mark_undeclared};
use ipclink_core::sample::LinkSample;

/// Content type of `/metrics`: the Prometheus text format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What a process shows on its endpoint. Every method may block (probes read the
/// filesystem): the router calls them on Tokio's blocking pool.
pub trait Exposition: Send + Sync + 'static {
    /// Appends every series of the process in the Prometheus text format.
    fn metrics(&self, out: &mut String);

    /// The `/v1/links` body; `None` when the process holds no links (404).
    fn links(&self) -> Option<LinksReport> {
        None
    }

    /// `Err(why)` while the process is not ready to serve (503 with the reason).
    fn ready(&self) -> Result<(), NotReady> {
        Ok(())
    }
}

/// Why a process is not ready to serve: what its `/readyz` answers 503 with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// Declared objects of these links are not all made yet (a sidecar, a plugin).
    ObjectsMissing(Vec<String>),
    /// Leading, but the first list of these watched kinds is not in yet (the operator).
    NotListed(Vec<&'static str>),
    /// Misconfigured: each says what is wrong and how to fix it.
    Misconfigured(Vec<String>),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::ObjectsMissing(links) => {
                write!(f, "objects missing in {}", links.join(", "))
            }
            NotReady::Misconfigured(faults) => write!(f, "misconfigured: {}", faults.join("; ")),
            NotReady::NotListed(kinds) => write!(
                f,
                "leading, but the first list of {} is not in yet",
                kinds.join(", ")
            ),
        }
    }
}

/// The router over `exposed`.
pub fn router(exposed: Arc<dyn Exposition>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/links", get(links))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(exposed)
}

/// The router of a probe listener: `/healthz` and `/readyz` only, so that clients of
/// the metrics endpoint (however many connections they hold) cannot starve the
/// kubelet's probes.
pub fn probe_router(exposed: Arc<dyn Exposition>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(exposed)
}

/// Serves [`probe_router`] on `addr` (`--probe-listen`), when given, until `shutdown`.
pub async fn spawn_probes(
    addr: Option<std::net::SocketAddr>,
    exposed: Arc<dyn Exposition>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use crate::http::{Limits, spawn_tcp};
    if let Some(addr) = addr {
        let app = probe_router(exposed);
        spawn_tcp("--probe-listen", addr, app, Limits::probes(), shutdown).await?;
    }
    Ok(())
}

/// A JSON `{"Err": ...}` answer.
fn refusal(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({"Err": message.into()}))).into_response()
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    exposed: Arc<dyn Exposition>,
    f: impl FnOnce(&dyn Exposition) -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(move || f(&*exposed))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "probe task failed");
            refusal(StatusCode::INTERNAL_SERVER_ERROR, "probe failed")
        })
}

async fn metrics(State(exposed): State<Arc<dyn Exposition>>) -> Response {
    let rendered = blocking(exposed, |e| {
        let mut out = String::with_capacity(16 * 1024);
        e.metrics(&mut out);
        out
    })
    .await;
    match rendered {
        Ok(text) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response(),
        Err(r) => r,
    }
}

async fn links(State(exposed): State<Arc<dyn Exposition>>) -> Response {
    match blocking(exposed, |e| e.links()).await {
        Ok(Some(report)) => Json(report).into_response(),
        Ok(None) => refusal(StatusCode::NOT_FOUND, "this process holds no links"),
        Err(r) => r,
    }
}

async fn readyz(State(exposed): State<Arc<dyn Exposition>>) -> Response {
    match blocking(exposed, |e| e.ready()).await {
        Ok(Ok(())) => "ready\n".into_response(),
        Ok(Err(why)) => refusal(StatusCode::SERVICE_UNAVAILABLE, why.to_string()),
        Err(r) => r,
    }
}

/// Links a process watches: their probes, kept open between scrapes, what observes
/// who holds their objects, and the members Compose discovery found.
#[derive(Debug, Default)]
pub struct LinkSet {
    probes: Vec<LinkProbe>,
    members: Vec<MemberReport>,
    observer: Observer,
    /// Misconfigurations found, by what found them: while any is set the process is not
    /// ready, and `/readyz` says each with its fix.
    faults: std::collections::BTreeMap<&'static str, String>,
}

/// A link set shared between the endpoint and whoever changes it.
pub type SharedLinks = Arc<Mutex<LinkSet>>;

impl LinkSet {
    /// A set over already-open probes, observed without holders (see [`LinkSet::observed_by`]).
    pub fn new(probes: Vec<LinkProbe>) -> Self {
        LinkSet {
            probes,
            members: Vec::new(),
            observer: Observer::default(),
            faults: Default::default(),
        }
    }

    /// The set, with who holds what observed by `observer`.
    pub fn observed_by(mut self, observer: Observer) -> Self {
        self.observer = observer;
        self
    }

    /// Replaces the probes (the links changed), keeping the observer.
    pub fn set_probes(&mut self, probes: Vec<LinkProbe>) {
        self.observer.forget();
        self.probes = probes;
    }

    /// Sets (or, with `None`, clears) the misconfiguration `source` found. Logged once
    /// when it appears or changes, and once when it is gone.
    pub fn set_fault(&mut self, source: &'static str, fault: Option<String>) {
        match fault {
            Some(f) if self.faults.get(source) != Some(&f) => {
                tracing::error!(source, "not ready: {f}");
                self.faults.insert(source, f);
            }
            None if self.faults.remove(source).is_some() => {
                tracing::info!(source, "misconfiguration gone");
            }
            _ => {}
        }
    }

    /// Replaces the discovered members.
    pub fn set_members(&mut self, members: Vec<MemberReport>) {
        // Who may hold what just changed: the next scrape looks again rather than
        // serving an observation made before.
        self.observer.forget();
        self.members = members;
    }

    /// Samples every link and adds the discovered members: the `/v1/links` body.
    pub fn report(&mut self) -> LinksReport {
        let links = self.sample();
        let mut members = self.members.clone();
        mark_undeclared(&mut members, &links);
        LinksReport { links, members }
    }

    /// Observes every link once: who holds what and the members' sockets first (one
    /// scan and one dump per network namespace for all links), then each link's objects.
    pub fn sample(&mut self) -> Vec<LinkSample> {
        let seen = self.observer.observe(&self.probes);
        self.probes.iter_mut().map(|p| p.sample(&seen)).collect()
    }

    /// Samples and appends the channel families and the Compose member families.
    pub fn render_metrics(&mut self, out: &mut String) {
        let samples = self.sample();
        let channels: usize = samples
            .iter()
            .map(|s| s.channels.len() + s.semaphores.len())
            .sum();
        out.reserve(4096 + channels * 6 * 120);
        render_channels(&samples, &[], out);
        let mut members = self.members.clone();
        mark_undeclared(&mut members, &samples);
        let info: Vec<_> = members
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
            out,
            "ipclink_member_info",
            "Containers that mount a link, by Compose service; always 1.",
            &info,
        );
        render_gauge(
            out,
            "ipclink_member_denied",
            "Channels and semaphores a member cannot use as the link declares (access missing); always 1.",
            &per_member(&members, "access", |m| &m.denied),
        );
        render_gauge(
            out,
            "ipclink_member_undeclared",
            "Channels a container's processes hold in a role its service is not declared for (or that a service which is not a member holds); always 1.",
            &per_member(&members, "role", |m| &m.undeclared),
        );
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

/// One series (of value 1) per channel entry `entries` gives for each member: the
/// member's labels, `channel`, and the entry's other half labelled `what`.
fn per_member<'a>(
    members: &'a [MemberReport],
    what: &'static str,
    entries: impl Fn(&'a MemberReport) -> &'a [(String, String)],
) -> Vec<(Vec<(&'static str, &'a str)>, u64)> {
    members
        .iter()
        .flat_map(|m| {
            entries(m).iter().map(move |(channel, value)| {
                let labels = vec![
                    ("namespace", m.namespace.as_str()),
                    ("link", m.link.as_str()),
                    ("service", m.service.as_str()),
                    ("container", m.container.as_str()),
                    ("channel", channel.as_str()),
                    (what, value.as_str()),
                ];
                (labels, 1)
            })
        })
        .collect()
}

impl Exposition for Mutex<LinkSet> {
    fn metrics(&self, out: &mut String) {
        self.lock()
            .unwrap_or_else(|p| p.into_inner())
            .render_metrics(out);
    }

    fn links(&self) -> Option<LinksReport> {
        Some(self.lock().unwrap_or_else(|p| p.into_inner()).report())
    }

    fn ready(&self) -> Result<(), NotReady> {
        let set = self.lock().unwrap_or_else(|p| p.into_inner());
        if !set.faults.is_empty() {
            return Err(NotReady::Misconfigured(
                set.faults.values().cloned().collect(),
            ));
        }
        let missing = set.incomplete();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(NotReady::ObjectsMissing(missing))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    struct Fixed;

    impl Exposition for Fixed {
        fn metrics(&self, out: &mut String) {
            out.push_str("ipclink_test 1\n");
        }

        fn ready(&self) -> Result<(), NotReady> {
            Err(NotReady::NotListed(vec!["pods"]))
        }
    }

    async fn get(app: &Router, path: &str) -> (StatusCode, Option<String>, String) {
        let resp = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("answer");
        let status = resp.status();
        let kind = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, kind, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn each_route_answers_from_the_exposition() {
        let app = router(Arc::new(Fixed));
        let (status, kind, body) = get(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(kind.as_deref(), Some(METRICS_CONTENT_TYPE));
        assert_eq!(body, "ipclink_test 1\n");
        let (status, _, body) = get(&app, "/v1/links").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("\"Err\""), "{body}");
        let (status, _, body) = get(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            r#"{"Err":"leading, but the first list of pods is not in yet"}"#
        );
        assert_eq!(get(&app, "/healthz").await.2, "ok\n");
    }

    #[tokio::test]
    async fn an_empty_link_set_is_ready_and_reports_no_links() {
        let app = router(Arc::new(Mutex::new(LinkSet::default())));
        assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);
        let (status, _, body) = get(&app, "/v1/links").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, r#"{"links":[]}"#);
    }

    /// The processes the member containers run, switched on by the test.
    struct Switched(Arc<Mutex<Vec<i32>>>);

    impl ipclink_core::probe::holders::Members for Switched {
        fn processes(&mut self) -> Result<Vec<ipclink_core::probe::holders::Process>, String> {
            let pids = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
            Ok(pids
                .into_iter()
                .map(|pid| ipclink_core::probe::holders::Process {
                    pid,
                    owner: Arc::default(),
                    scope: None,
                })
                .collect())
        }
    }

    #[test]
    fn new_members_are_looked_at_by_the_next_scrape_not_a_second_later() {
        use ipclink_core::store::{StorageMode, Store};
        let base = tempfile::tempdir().expect("temp dir");
        let store = Store::open(base.path(), StorageMode::PlainDir).expect("store");
        let yaml = "apiVersion: ipclink.dev/v1alpha1\nkind: IpcLink\nmetadata: { name: lk, namespace: ns }\nspec:\n  channels:\n    - { name: r, kind: shm, size: 4Ki }\n";
        let link = &ipclink_core::parse_links("t", yaml).expect("parse")[0];
        let plan = ipclink_core::validate(link).expect("valid");
        store.materialize(&plan).expect("materialize");
        let held = std::fs::File::open(store.link_path("ns", "lk").join("r")).expect("open");
        let pids = Arc::new(Mutex::new(Vec::new()));
        let mut set =
            LinkSet::new(vec![LinkProbe::open(&store, &plan).expect("probe")]).observed_by(
                Observer::new(Box::new(Switched(pids.clone())), false, false),
            );
        let readers = |set: &mut LinkSet| set.sample()[0].channels[0].holders.len();
        assert_eq!(readers(&mut set), 0, "no member runs yet");
        *pids.lock().expect("pids") = vec![std::process::id() as i32];
        assert_eq!(readers(&mut set), 0, "an observation serves for a second");
        set.set_members(Vec::new());
        assert_eq!(readers(&mut set), 1, "new members: looked at again");
        drop(held);
    }
}
