//! Who may read an endpoint's data (`/metrics`, `/v1/links`): a bearer token, reviewed
//! by a [`Reviewer`] (in a cluster, the API server's TokenReview and SubjectAccessReview,
//! as controller-runtime's secure metrics do), with the verdicts cached for a while.
//! `/healthz` and `/readyz` stay open: they say nothing about any tenant.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The header a client sends its token in when the API server's pod proxy is between it
/// and the endpoint (the proxy keeps `Authorization` for itself).
pub const PROXIED_AUTHORIZATION: &str = "x-ipclink-authorization";

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
/// Verdicts kept at most.
const CACHED: usize = 4096;

/// A reviewer with its cache.
pub struct Guard {
    reviewer: Box<dyn Reviewer>,
    cache: Mutex<HashMap<(String, String), (Verdict, Instant)>>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Guard")
    }
}

impl Guard {
    /// A guard asking `reviewer`.
    pub fn new(reviewer: impl Reviewer) -> Arc<Self> {
        Arc::new(Guard {
            reviewer: Box::new(reviewer),
            cache: Mutex::default(),
        })
    }

    async fn verdict(&self, token: &str, path: &str) -> Result<Verdict, String> {
        let key = (token.to_owned(), path.to_owned());
        let now = Instant::now();
        if let Some((v, until)) = self.lock().get(&key)
            && *until > now
        {
            return Ok(v.clone());
        }
        let verdict = self.reviewer.review(token, path).await?;
        let keep = if verdict == Verdict::Allowed {
            ALLOWED_FOR
        } else {
            REFUSED_FOR
        };
        let mut cache = self.lock();
        if cache.len() >= CACHED {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= CACHED {
                cache.clear();
            }
        }
        cache.insert(key, (verdict.clone(), now + keep));
        Ok(verdict)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), (Verdict, Instant)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `app` with every path but `/healthz` and `/readyz` behind `guard`.
pub fn guarded(app: Router, guard: Arc<Guard>) -> Router {
    app.layer(axum::middleware::from_fn_with_state(guard, check))
}

/// The bearer token of a request: `Authorization: Bearer T`, or the same in
/// [`PROXIED_AUTHORIZATION`]. The first of the two that is there decides; a token that
/// is not an RFC 6750 `b64token` (letters, digits, `-._~+/`, then `=`s) is none: the
/// API server's JWT parser drops whitespace, so "T junk" would pass as T.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = [header::AUTHORIZATION.as_str(), PROXIED_AUTHORIZATION]
        .iter()
        .find_map(|h| headers.get(*h))?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
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
            format!("GET {path} needs a Kubernetes bearer token (Authorization: Bearer TOKEN)"),
        );
    };
    match guard.verdict(token, &path).await {
        Ok(Verdict::Allowed) => next.run(req).await,
        Ok(Verdict::Unauthenticated) => refused(
            StatusCode::UNAUTHORIZED,
            "the bearer token is not valid".to_owned(),
        ),
        Ok(Verdict::Forbidden(user)) => refused(
            StatusCode::FORBIDDEN,
            format!("{user} may not get {path} (needs the nonResourceURL {path}, verb get)"),
        ),
        Err(e) => {
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

    /// The API server reviews: TokenReview (who is it), then SubjectAccessReview (may
    /// they `get` the non-resource URL of the path). Needs `create` on
    /// `tokenreviews.authentication.k8s.io` and
    /// `subjectaccessreviews.authorization.k8s.io`.
    pub struct KubeReviewer {
        client: kube::Client,
    }

    impl std::fmt::Debug for KubeReviewer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("KubeReviewer")
        }
    }

    impl KubeReviewer {
        /// A reviewer over `client`.
        pub fn new(client: kube::Client) -> Self {
            KubeReviewer { client }
        }

        async fn ask(&self, token: &str, path: &str) -> Result<Verdict, String> {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_owned()),
                    audiences: None,
                },
                ..Default::default()
            };
            let reviewed = Api::<TokenReview>::all(self.client.clone())
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| format!("TokenReview: {e}"))?;
            let status = reviewed.status.unwrap_or_default();
            let Some(user) = status.user.filter(|_| status.authenticated == Some(true)) else {
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
                match token {
                    "good" => Ok(Verdict::Allowed),
                    "other" => Ok(Verdict::Forbidden("system:serviceaccount:x:y".into())),
                    "down" => Err("connection refused".into()),
                    _ => Ok(Verdict::Unauthenticated),
                }
            })
        }
    }

    async fn status(app: &Router, path: &str, auth: Option<(&str, &str)>) -> (StatusCode, String) {
        let mut req = Request::get(path);
        if let Some((h, v)) = auth {
            req = req.header(h, v);
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
}
