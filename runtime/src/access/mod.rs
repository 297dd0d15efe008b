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

/// Why a token could not be reviewed now: which review failed, and the client's error.
#[derive(Debug)]
pub struct ReviewFailed {
    /// The review asked for (`TokenReview`, `SubjectAccessReview`).
    pub review: &'static str,
    /// Why it failed.
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl std::fmt::Display for ReviewFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.review, self.source)
    }
}

impl std::error::Error for ReviewFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// A future a [`Reviewer`] returns.
pub type Review<'a> = Pin<Box<dyn Future<Output = Result<Verdict, ReviewFailed>> + Send + 'a>>;

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
    ) -> Result<Result<Verdict, ReviewFailed>, Busy> {
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
mod kube_reviewer;

#[cfg(test)]
mod tests;
