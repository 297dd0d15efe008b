//! The reviewer of a cluster: the API server's TokenReview, then a SubjectAccessReview
//! of the path.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use super::{Review, ReviewFailed, Reviewer, Verdict};

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
    ) -> Result<Option<k8s_openapi::api::authentication::v1::UserInfo>, ReviewFailed> {
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
            .map_err(|e| ReviewFailed {
                review: "TokenReview",
                source: Box::new(e),
            })?;
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

    async fn ask(&self, token: &str, path: &str) -> Result<Verdict, ReviewFailed> {
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
            .map_err(|e| ReviewFailed {
                review: "SubjectAccessReview",
                source: Box::new(e),
            })?;
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
