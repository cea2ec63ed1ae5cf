//! ServiceAccount tokens checked by the cluster: the `TokenReview` API with meshfed's audience.
//! A sidecar presents its pod's projected token (audience [`AUDIENCE`], bound to the pod); the
//! API server says whether it is valid, for that audience, whose it is and which pod it is
//! bound to (a token of a deleted pod no longer reviews as authenticated).

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Api;
use kube::api::PostParams;
use meshfed_control::server::{Review, ReviewError, ReviewedToken, TokenReviewer};

/// The audience of the projected token a sidecar presents.
pub const AUDIENCE: &str = "meshfed";

/// Where the injected sidecar finds its projected token.
pub const TOKEN_FILE: &str = "/var/run/secrets/meshfed/token";

/// The `extra` key naming the pod a projected token is bound to.
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";

/// Reviews tokens with the cluster's TokenReview API (RBAC: `create` on `tokenreviews`).
#[derive(Clone)]
pub struct KubeTokenReviewer {
    client: kube::Client,
}

impl std::fmt::Debug for KubeTokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeTokenReviewer").finish_non_exhaustive()
    }
}

impl KubeTokenReviewer {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    async fn check(&self, token: &str) -> Result<ReviewedToken, ReviewError> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let done = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ReviewError::Call(e.to_string()))?;
        reviewed(done.status.unwrap_or_default())
    }
}

/// What a TokenReview's status proves.
fn reviewed(
    status: k8s_openapi::api::authentication::v1::TokenReviewStatus,
) -> Result<ReviewedToken, ReviewError> {
    if status.authenticated != Some(true) {
        return Err(ReviewError::NotAuthenticated(
            status.error.unwrap_or_else(|| "not authenticated".into()),
        ));
    }
    if !status
        .audiences
        .as_ref()
        .is_some_and(|a| a.iter().any(|x| x == AUDIENCE))
    {
        return Err(ReviewError::WrongAudience(AUDIENCE.into()));
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let Some((namespace, service_account)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    else {
        return Err(ReviewError::NotServiceAccount(username));
    };
    let pod = user
        .extra
        .as_ref()
        .and_then(|e| e.get(POD_NAME))
        .and_then(|v| v.first())
        .cloned();
    Ok(ReviewedToken {
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        pod,
    })
}

impl TokenReviewer for KubeTokenReviewer {
    fn review<'a>(&'a self, token: &'a str) -> Review<'a> {
        Box::pin(self.check(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    fn status(
        authenticated: bool,
        audience: &str,
        username: &str,
        pod: Option<&str>,
    ) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(vec![audience.to_owned()]),
            error: None,
            user: Some(UserInfo {
                username: Some(username.to_owned()),
                extra: pod.map(|p| [(POD_NAME.to_owned(), vec![p.to_owned()])].into()),
                ..UserInfo::default()
            }),
        }
    }

    #[test]
    fn a_review_proves_a_service_account_of_our_audience_and_its_pod() {
        let ok = reviewed(status(
            true,
            "meshfed",
            "system:serviceaccount:shop:echo",
            Some("echo-1"),
        ));
        assert_eq!(
            ok,
            Ok(ReviewedToken {
                namespace: "shop".into(),
                service_account: "echo".into(),
                pod: Some("echo-1".into()),
            })
        );
        for (s, why) in [
            (
                status(
                    false,
                    "meshfed",
                    "system:serviceaccount:shop:echo",
                    Some("p"),
                ),
                "TokenNotAuthenticated",
            ),
            (
                status(
                    true,
                    "https://kubernetes.default.svc",
                    "system:serviceaccount:shop:echo",
                    Some("p"),
                ),
                "TokenWrongAudience",
            ),
            (
                status(true, "meshfed", "alice", Some("p")),
                "TokenNotServiceAccount",
            ),
        ] {
            let e = reviewed(s).err().map(|e| e.reason()).unwrap_or_default();
            assert_eq!(e, why);
        }
        let unbound = reviewed(status(
            true,
            "meshfed",
            "system:serviceaccount:shop:echo",
            None,
        ));
        assert_eq!(unbound.map(|t| t.pod), Ok(None));
    }
}
