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
                "down" => Err(ReviewFailed {
                    review: "TokenReview",
                    source: "connection refused".into(),
                }),
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
