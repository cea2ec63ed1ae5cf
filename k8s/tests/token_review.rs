//! The TokenReview path against the in-memory API server with the real kube client: a pod's
//! projected token for meshfed's audience proves its ServiceAccount and pod; a token for
//! another audience, or one the cluster does not know, proves nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod support;

use meshfed_control::server::{ReviewedToken, TokenReviewer};
use meshfed_k8s::token_review::{AUDIENCE, KubeTokenReviewer};
use support::ApiServer;

#[tokio::test]
async fn the_cluster_vouches_for_a_pods_token_of_our_audience_only() {
    let api = ApiServer::start().await;
    api.vouch("pod-token", AUDIENCE, "shop", "echo", Some("echo-1"));
    api.vouch(
        "api-token",
        "https://kubernetes.default.svc",
        "shop",
        "echo",
        Some("echo-1"),
    );
    api.vouch("legacy-token", AUDIENCE, "shop", "echo", None);
    let reviewer = KubeTokenReviewer::new(api.client());
    assert_eq!(
        reviewer.review("pod-token").await,
        Ok(ReviewedToken {
            namespace: "shop".into(),
            service_account: "echo".into(),
            pod: Some("echo-1".into()),
        })
    );
    for token in ["api-token", "unknown"] {
        let e = reviewer.review(token).await.unwrap_err();
        assert_eq!(e.reason(), "TokenNotAuthenticated", "{token}: {e}");
    }
    // A token bound to no pod reviews, and says so (the control plane refuses it).
    assert_eq!(reviewer.review("legacy-token").await.unwrap().pod, None);
}
