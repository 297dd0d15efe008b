//! Who may read an endpoint's data (`/metrics`, `/v1/links`): a bearer token, reviewed
//! by a [`Reviewer`] (in a cluster, the API server's TokenReview and SubjectAccessReview,
//! as controller-runtime's secure metrics do), with the verdicts cached for a while.
//! `/healthz` and `/readyz` stay open: they say nothing about any tenant.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

/// The header a client sends its token in when the API server's pod proxy is between it
/// and the endpoint (the proxy keeps `Authorization` for itself).
pub const PROXIED_AUTHORIZATION: &str = "x-ipclink-authorization";

pub use ipclink_core::model::names::METRICS_AUDIENCE;

/// What a review of a token for a path found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The token's user may GET the path.
    Allowed,
    /// The token is not valid (401).
    Unauthenticated,
    /// The token's user, named, may not GET the path (403).
    Forbidden(String),
}

/// A future a [`Reviewer`] returns.
pub type Review<'a> = Pin<Box<dyn Future<Output = Result<Verdict, String>> + Send + 'a>>;

/// Decides whether a bearer token may GET a path; `Err` when it cannot tell now (the
/// API server is unreachable), which is answered 503 and not remembered.
pub trait Reviewer: Send + Sync + 'static {
    /// Reviews `token` for GET `path`.
    fn review<'a>(&'a self, token: &'a str, path: &'a str) -> Review<'a>;
}

/// How long an allowed token is trusted without asking again.
const ALLOWED_FOR: Duration = Duration::from_secs(60);
/// How long a refusal is remembered.
const REFUSED_FOR: Duration = Duration::from_secs(10);
/// Allowed verdicts kept at most (one per reader and path: Prometheus, the operator,
/// administrators). Only a token the API server allowed gets one, so no stranger can
/// push them out.
const ALLOWED_KEPT: usize = 1024;
/// Refusals kept at most; a stranger's tokens push out only older refusals.
const REFUSED_KEPT: usize = 4096;
/// The longest user name kept with a refusal (the API server's are far shorter).
const USER_KEPT: usize = 256;
/// The longest bearer token reviewed: service account tokens are 1–2 KiB, and a longer
/// one is answered 401 without asking the API server.
pub const MAX_TOKEN_BYTES: usize = 8 << 10;
/// Reviews of tokens not allowed before that run at once, in all and from one peer;
/// more wait (up to [`REVIEW_WAIT`]), or from one peer are refused at once (429).
const REVIEWS: usize = 8;
const REVIEWS_PER_PEER: usize = 2;
/// Reviews of tokens allowed before (a reader whose verdict expired) that run at once:
/// a lane of their own, so strangers' tokens cannot keep Prometheus waiting.
const RE_REVIEWS: usize = 4;
/// How long a request waits for a review to start before it is answered 503.
const REVIEW_WAIT: Duration = Duration::from_secs(2);

/// The address of the peer a request came from (an extension [`crate::http`] sets on
/// TCP connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer(pub std::net::IpAddr);

/// A cache key: SHA-256 of the token and the path, so a cached verdict holds no token.
type Key = [u8; 32];

fn key(token: &str, path: &str) -> Key {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(token.as_bytes());
    ctx.update(&[0]);
    ctx.update(path.as_bytes());
    let mut k = [0u8; 32];
    k.copy_from_slice(ctx.finish().as_ref());
    k
}

/// Verdicts of one kind, at most `cap`, the oldest pushed out first.
#[derive(Debug)]
struct Kept {
    cap: usize,
    by_key: HashMap<Key, (Verdict, Instant)>,
    order: VecDeque<Key>,
}

impl Kept {
    fn new(cap: usize) -> Self {
        Kept {
            cap,
            by_key: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn insert(&mut self, k: Key, v: Verdict, until: Instant) {
        if let Some(e) = self.by_key.get_mut(&k) {
            *e = (v, until);
            return;
        }
        while self.by_key.len() >= self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.by_key.remove(&old);
                }
                None => break,
            }
        }
        self.by_key.insert(k, (v, until));
        self.order.push_back(k);
    }

    fn remove(&mut self, k: &Key) {
        if self.by_key.remove(k).is_some() {
            self.order.retain(|o| o != k);
        }
    }
}

/// The verdicts kept: allowed ones apart from refusals.
#[derive(Debug)]
struct Cache {
    allowed: Kept,
    refused: Kept,
}

/// What the cache knows of a key.
enum Known {
    /// A verdict still valid.
    Fresh(Verdict),
    /// An allowed verdict that expired: the token's reader is known.
    Expired,
    /// Nothing.
    Unknown,
}

impl Cache {
    fn known(&self, k: &Key, now: Instant) -> Known {
        for kept in [&self.allowed, &self.refused] {
            if let Some((v, until)) = kept.by_key.get(k)
                && *until > now
            {
                return Known::Fresh(v.clone());
            }
        }
        if self.allowed.by_key.contains_key(k) {
            Known::Expired
        } else {
            Known::Unknown
        }
    }

    fn remember(&mut self, k: Key, v: Verdict, now: Instant) {
        if v == Verdict::Allowed {
            self.refused.remove(&k);
            self.allowed.insert(k, v, now + ALLOWED_FOR);
        } else {
            self.allowed.remove(&k);
            let v = match v {
                Verdict::Forbidden(mut user) if user.len() > USER_KEPT => {
                    let mut end = USER_KEPT;
                    while !user.is_char_boundary(end) {
                        end -= 1;
                    }
                    user.truncate(end);
                    Verdict::Forbidden(user)
                }
                v => v,
            };
            self.refused.insert(k, v, now + REFUSED_FOR);
        }
    }
}

/// Why a token was not reviewed now.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Busy {
    /// This peer has [`REVIEWS_PER_PEER`] reviews under way (429).
    Peer,
    /// No review could start within [`REVIEW_WAIT`] (503).
    Reviews,
}

/// A reviewer with its cache and the limits on reviews under way.
pub struct Guard {
    reviewer: Box<dyn Reviewer>,
    cache: Mutex<Cache>,
    reviews: Semaphore,
    re_reviews: Semaphore,
    per_peer: Mutex<HashMap<std::net::IpAddr, usize>>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Guard")
    }
}

/// A review under way from one peer; counted until dropped.
struct PeerReview<'a> {
    guard: &'a Guard,
    peer: std::net::IpAddr,
}

impl Drop for PeerReview<'_> {
    fn drop(&mut self) {
        let mut peers = self.guard.peers();
        if let Some(n) = peers.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                peers.remove(&self.peer);
            }
        }
    }
}

impl Guard {
    /// A guard asking `reviewer`.
    pub fn new(reviewer: impl Reviewer) -> Arc<Self> {
        Arc::new(Guard {
            reviewer: Box::new(reviewer),
            cache: Mutex::new(Cache {
                allowed: Kept::new(ALLOWED_KEPT),
                refused: Kept::new(REFUSED_KEPT),
            }),
            reviews: Semaphore::new(REVIEWS),
            re_reviews: Semaphore::new(RE_REVIEWS),
            per_peer: Mutex::default(),
        })
    }

    async fn verdict(
        &self,
        token: &str,
        path: &str,
        peer: Option<std::net::IpAddr>,
    ) -> Result<Result<Verdict, String>, Busy> {
        let k = key(token, path);
        let known = self.lock().known(&k, Instant::now());
        let (lane, _peer) = match known {
            Known::Fresh(v) => return Ok(Ok(v)),
            Known::Expired => (&self.re_reviews, None),
            Known::Unknown => (&self.reviews, self.count_peer(peer)?),
        };
        let Ok(Ok(_permit)) = tokio::time::timeout(REVIEW_WAIT, lane.acquire()).await else {
            return Err(Busy::Reviews);
        };
        let verdict = match self.reviewer.review(token, path).await {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        self.lock().remember(k, verdict.clone(), Instant::now());
        Ok(Ok(verdict))
    }

    /// Counts a review from `peer`, or refuses it when the peer has enough under way.
    fn count_peer(&self, peer: Option<std::net::IpAddr>) -> Result<Option<PeerReview<'_>>, Busy> {
        let Some(peer) = peer else {
            return Ok(None);
        };
        let mut peers = self.peers();
        let n = peers.entry(peer).or_insert(0);
        if *n >= REVIEWS_PER_PEER {
            return Err(Busy::Peer);
        }
        *n += 1;
        Ok(Some(PeerReview { guard: self, peer }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<std::net::IpAddr, usize>> {
        self.per_peer.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `app` with every path but `/healthz` and `/readyz` behind `guard`.
pub fn guarded(app: Router, guard: Arc<Guard>) -> Router {
    app.layer(axum::middleware::from_fn_with_state(guard, check))
}

/// The bearer token of a request: `Authorization: Bearer T`, or the same in
/// [`PROXIED_AUTHORIZATION`]. The first of the two that is there decides; a token that
/// is not an RFC 6750 `b64token` (letters, digits, `-._~+/`, then `=`s) is none: the
/// API server's JWT parser drops whitespace, so "T junk" would pass as T. So is one
/// longer than [`MAX_TOKEN_BYTES`].
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = [header::AUTHORIZATION.as_str(), PROXIED_AUTHORIZATION]
        .iter()
        .find_map(|h| headers.get(*h))?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    if token.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let body = token.trim_end_matches('=');
    let b64token = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
    (scheme.eq_ignore_ascii_case("bearer") && b64token).then_some(token)
}

fn refused(status: StatusCode, message: String) -> Response {
    let mut r = (status, format!("{message}\n")).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

async fn check(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if path == "/healthz" || path == "/readyz" {
        return next.run(req).await;
    }
    let Some(token) = bearer(req.headers()) else {
        return refused(
            StatusCode::UNAUTHORIZED,
            format!(
                "GET {path} needs a Kubernetes bearer token of at most {MAX_TOKEN_BYTES} bytes (Authorization: Bearer TOKEN)"
            ),
        );
    };
    let peer = req.extensions().get::<Peer>().map(|p| p.0);
    match guard.verdict(token, &path, peer).await {
        Err(Busy::Peer) => {
            let mut r = refused(
                StatusCode::TOO_MANY_REQUESTS,
                format!("{REVIEWS_PER_PEER} token reviews from this address are under way"),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        }
        Err(Busy::Reviews) => refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many token reviews are under way; try again".to_owned(),
        ),
        Ok(Ok(Verdict::Allowed)) => next.run(req).await,
        Ok(Ok(Verdict::Unauthenticated)) => refused(
            StatusCode::UNAUTHORIZED,
            "the bearer token is not valid".to_owned(),
        ),
        Ok(Ok(Verdict::Forbidden(user))) => refused(
            StatusCode::FORBIDDEN,
            format!("{user} may not get {path} (needs the nonResourceURL {path}, verb get)"),
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot review a token");
            refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "the token cannot be reviewed now".to_owned(),
            )
        }
    }
}

/// How an endpoint's data is protected (`--metrics-auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAuth {
    /// HTTPS, and a bearer token the API server authenticates and authorizes.
    Kubernetes,
    /// Plain HTTP, anyone who can connect: only on a loopback address.
    None,
}

impl std::str::FromStr for MetricsAuth {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kubernetes" => Ok(MetricsAuth::Kubernetes),
            "none" => Ok(MetricsAuth::None),
            _ => Err(format!("{s:?}: expected kubernetes or none")),
        }
    }
}

impl MetricsAuth {
    /// The protection of an endpoint on `listen`: as asked, or by default `none` on a
    /// loopback address and `kubernetes` elsewhere. `none` off loopback is refused.
    pub fn resolve(
        asked: Option<MetricsAuth>,
        listen: std::net::SocketAddr,
    ) -> Result<Self, String> {
        let loopback = listen.ip().is_loopback();
        match asked {
            Some(MetricsAuth::None) if !loopback => Err(format!(
                "--metrics-auth none: only a loopback address may serve metrics without authentication, and --metrics-listen is {listen} (use 127.0.0.1, or --metrics-auth kubernetes)"
            )),
            Some(a) => Ok(a),
            None if loopback => Ok(MetricsAuth::None),
            None => Ok(MetricsAuth::Kubernetes),
        }
    }
}

#[cfg(feature = "kube")]
pub use self::kube_reviewer::KubeReviewer;

#[cfg(feature = "kube")]
mod kube_reviewer {
    use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
    use k8s_openapi::api::authorization::v1::{
        NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    use kube::api::{Api, PostParams};

    use super::{Review, Reviewer, Verdict};

    /// The API server reviews: TokenReview (who is it, for the audience
    /// [`METRICS_AUDIENCE`](super::METRICS_AUDIENCE), which the answer must name), then
    /// SubjectAccessReview (may they `get` the non-resource URL of the path). Needs
    /// `create` on `tokenreviews.authentication.k8s.io` and
    /// `subjectaccessreviews.authorization.k8s.io`.
    pub struct KubeReviewer {
        client: kube::Client,
        accept_api_audience: bool,
    }

    impl std::fmt::Debug for KubeReviewer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("KubeReviewer")
        }
    }

    impl KubeReviewer {
        /// A reviewer over `client`; with `accept_api_audience`, a token for the API
        /// server itself is accepted too (`--metrics-accept-api-audience`, for scrapers
        /// that cannot mount a token of the metrics audience).
        pub fn new(client: kube::Client, accept_api_audience: bool) -> Self {
            KubeReviewer {
                client,
                accept_api_audience,
            }
        }

        /// Who `token` is, for `audiences` (`None`: the API server's own), if valid.
        async fn who(
            &self,
            token: &str,
            audiences: Option<Vec<String>>,
        ) -> Result<Option<k8s_openapi::api::authentication::v1::UserInfo>, String> {
            let wanted = audiences.clone();
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_owned()),
                    audiences,
                },
                ..Default::default()
            };
            let reviewed = Api::<TokenReview>::all(self.client.clone())
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| format!("TokenReview: {e}"))?;
            let status = reviewed.status.unwrap_or_default();
            // The answer names the audiences the token is good for; one asked for must
            // be among them.
            let audience_ok = wanted.is_none_or(|w| {
                status
                    .audiences
                    .as_ref()
                    .is_some_and(|a| a.iter().any(|x| w.contains(x)))
            });
            Ok(status
                .user
                .filter(|_| status.authenticated == Some(true) && audience_ok))
        }

        async fn ask(&self, token: &str, path: &str) -> Result<Verdict, String> {
            let mut user = self
                .who(token, Some(vec![super::METRICS_AUDIENCE.to_owned()]))
                .await?;
            if user.is_none() && self.accept_api_audience {
                user = self.who(token, None).await?;
            }
            let Some(user) = user else {
                return Ok(Verdict::Unauthenticated);
            };

            let access = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: user.username.clone(),
                    groups: user.groups,
                    uid: user.uid,
                    extra: user.extra,
                    non_resource_attributes: Some(NonResourceAttributes {
                        path: Some(path.to_owned()),
                        verb: Some("get".to_owned()),
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let decided = Api::<SubjectAccessReview>::all(self.client.clone())
                .create(&PostParams::default(), &access)
                .await
                .map_err(|e| format!("SubjectAccessReview: {e}"))?;
            Ok(if decided.status.is_some_and(|s| s.allowed) {
                Verdict::Allowed
            } else {
                Verdict::Forbidden(user.username.unwrap_or_else(|| "this user".into()))
            })
        }
    }

    impl Reviewer for KubeReviewer {
        fn review<'a>(&'a self, token: &'a str, path: &'a str) -> Review<'a> {
            Box::pin(self.ask(token, path))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;

    /// `good` may read anything, `bad` is nobody, `other` may read /healthz only;
    /// counts the reviews.
    struct Fixed(Arc<AtomicUsize>);

    impl Reviewer for Fixed {
        fn review<'a>(&'a self, token: &'a str, _path: &'a str) -> Review<'a> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                if token.starts_with("slow") {
                    // Held until the test lets it go: a review under way.
                    let _ = SLOW.acquire().await;
                }
                match token {
                    "good" => Ok(Verdict::Allowed),
                    "other" => Ok(Verdict::Forbidden("system:serviceaccount:x:y".into())),
                    "down" => Err("connection refused".into()),
                    _ => Ok(Verdict::Unauthenticated),
                }
            })
        }
    }

    /// Reviews of `slow…` tokens wait for a permit here (none until a test adds them).
    static SLOW: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(0);

    async fn status(app: &Router, path: &str, auth: Option<(&str, &str)>) -> (StatusCode, String) {
        status_from(app, path, auth, None).await
    }

    async fn status_from(
        app: &Router,
        path: &str,
        auth: Option<(&str, &str)>,
        peer: Option<[u8; 4]>,
    ) -> (StatusCode, String) {
        let mut req = Request::get(path);
        if let Some((h, v)) = auth {
            req = req.header(h, v);
        }
        if let Some(ip) = peer {
            req = req.extension(Peer(std::net::IpAddr::from(ip)));
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let code = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .expect("body");
        (code, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn tokens_are_reviewed_and_verdicts_cached() {
        let reviews = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route("/metrics", get(|| async { "secret" }))
            .route("/healthz", get(|| async { "ok" }));
        let app = guarded(app, Guard::new(Fixed(reviews.clone())));
        let auth = header::AUTHORIZATION.as_str();

        assert_eq!(status(&app, "/healthz", None).await.0, StatusCode::OK);
        let (code, body) = status(&app, "/metrics", None).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert!(
            !body.contains("secret") && body.contains("bearer token"),
            "{body}"
        );
        for (value, code) in [
            ("Bearer bad", StatusCode::UNAUTHORIZED),
            ("Basic good", StatusCode::UNAUTHORIZED),
            ("Bearer ", StatusCode::UNAUTHORIZED),
            ("Bearer good junk", StatusCode::UNAUTHORIZED),
            ("Bearer go\tod", StatusCode::UNAUTHORIZED),
            ("Bearer other", StatusCode::FORBIDDEN),
            ("Bearer down", StatusCode::SERVICE_UNAVAILABLE),
            ("Bearer good", StatusCode::OK),
            ("bearer good", StatusCode::OK),
        ] {
            let (got, body) = status(&app, "/metrics", Some((auth, value))).await;
            assert_eq!(got, code, "{value}: {body}");
            assert_eq!(body.contains("secret"), code == StatusCode::OK, "{value}");
        }
        let (_, body) = status(&app, "/metrics", Some((auth, "Bearer other"))).await;
        assert!(
            body.contains("system:serviceaccount:x:y may not get /metrics"),
            "{body}"
        );
        // Through the API server's proxy, the token comes in its own header.
        let proxied = Some((PROXIED_AUTHORIZATION, "Bearer good"));
        assert_eq!(status(&app, "/metrics", proxied).await.0, StatusCode::OK);
        // Verdicts are remembered, but "cannot tell" is asked again: bad, other, down,
        // good once each, down once more.
        let before = reviews.load(Ordering::SeqCst);
        for value in ["Bearer good", "Bearer bad", "Bearer other", "Bearer down"] {
            status(&app, "/metrics", Some((auth, value))).await;
        }
        assert_eq!(reviews.load(Ordering::SeqCst), before + 1);
    }

    fn app(reviews: &Arc<AtomicUsize>) -> (Router, Arc<Guard>) {
        let guard = Guard::new(Fixed(reviews.clone()));
        let app = Router::new().route("/metrics", get(|| async { "secret" }));
        (guarded(app, guard.clone()), guard)
    }

    #[tokio::test]
    async fn a_token_over_the_limit_is_refused_without_a_review() {
        let reviews = Arc::new(AtomicUsize::new(0));
        let (app, _) = app(&reviews);
        let auth = header::AUTHORIZATION.as_str();
        let at_limit = format!("Bearer {}", "A".repeat(MAX_TOKEN_BYTES));
        let over = format!("Bearer {}", "A".repeat(MAX_TOKEN_BYTES + 1));
        let (code, _) = status(&app, "/metrics", Some((auth, &at_limit))).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert_eq!(
            reviews.load(Ordering::SeqCst),
            1,
            "the token at the limit is reviewed"
        );
        let (code, body) = status(&app, "/metrics", Some((auth, &over))).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert!(body.contains("at most 8192 bytes"), "{body}");
        assert_eq!(reviews.load(Ordering::SeqCst), 1, "the longer one is not");
    }

    #[tokio::test]
    async fn strangers_tokens_push_out_no_allowed_verdict_and_keep_no_token() {
        let reviews = Arc::new(AtomicUsize::new(0));
        let (app, guard) = app(&reviews);
        let auth = header::AUTHORIZATION.as_str();
        assert_eq!(
            status(&app, "/metrics", Some((auth, "Bearer good")))
                .await
                .0,
            StatusCode::OK
        );
        let n = REFUSED_KEPT + ALLOWED_KEPT + 100;
        for i in 0..n {
            let token = format!("Bearer stranger{i}{}", "x".repeat(4000));
            let (code, _) = status(&app, "/metrics", Some((auth, &token))).await;
            assert_eq!(code, StatusCode::UNAUTHORIZED);
        }
        assert_eq!(reviews.load(Ordering::SeqCst), 1 + n);
        // The reader's verdict is still there: no review for it.
        assert_eq!(
            status(&app, "/metrics", Some((auth, "Bearer good")))
                .await
                .0,
            StatusCode::OK
        );
        assert_eq!(reviews.load(Ordering::SeqCst), 1 + n);
        let cache = guard.lock();
        assert_eq!(cache.refused.by_key.len(), REFUSED_KEPT);
        assert_eq!(cache.refused.order.len(), REFUSED_KEPT);
        assert_eq!(cache.allowed.by_key.len(), 1);
    }

    #[tokio::test]
    async fn reviews_under_way_are_capped_per_peer_and_in_all() {
        let reviews = Arc::new(AtomicUsize::new(0));
        let (app, _) = app(&reviews);
        let auth = header::AUTHORIZATION.as_str();
        assert_eq!(
            status(&app, "/metrics", Some((auth, "Bearer good")))
                .await
                .0,
            StatusCode::OK
        );
        // Two slow reviews from one peer: a third from it is refused at once.
        let mut held = Vec::new();
        for i in 0..REVIEWS_PER_PEER {
            let app = app.clone();
            held.push(tokio::spawn(async move {
                let t = format!("Bearer slow-a{i}");
                status_from(&app, "/metrics", Some((auth, &t)), Some([10, 0, 0, 1])).await
            }));
        }
        while reviews.load(Ordering::SeqCst) < 1 + REVIEWS_PER_PEER {
            tokio::task::yield_now().await;
        }
        let (code, _) = status_from(
            &app,
            "/metrics",
            Some((auth, "Bearer x1")),
            Some([10, 0, 0, 1]),
        )
        .await;
        assert_eq!(code, StatusCode::TOO_MANY_REQUESTS);
        // Other peers fill the other review slots; one more waits, then gets 503.
        for i in REVIEWS_PER_PEER..REVIEWS {
            let app = app.clone();
            held.push(tokio::spawn(async move {
                let t = format!("Bearer slow-b{i}");
                status_from(
                    &app,
                    "/metrics",
                    Some((auth, &t)),
                    Some([10, 0, 1, i as u8]),
                )
                .await
            }));
        }
        while reviews.load(Ordering::SeqCst) < 1 + REVIEWS {
            tokio::task::yield_now().await;
        }
        let (code, _) = status_from(
            &app,
            "/metrics",
            Some((auth, "Bearer x2")),
            Some([10, 0, 2, 1]),
        )
        .await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            reviews.load(Ordering::SeqCst),
            1 + REVIEWS,
            "x1 and x2 were not reviewed"
        );
        // A reader already allowed is answered meanwhile.
        assert_eq!(
            status(&app, "/metrics", Some((auth, "Bearer good")))
                .await
                .0,
            StatusCode::OK
        );
        SLOW.add_permits(REVIEWS);
        for h in held {
            assert_eq!(h.await.expect("task").0, StatusCode::UNAUTHORIZED);
        }
        // The peer's count went back: it may have reviews again.
        let (code, _) = status_from(
            &app,
            "/metrics",
            Some((auth, "Bearer x3")),
            Some([10, 0, 0, 1]),
        )
        .await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
    }
}
