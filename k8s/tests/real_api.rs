//! The real-API tier: meshfed's Kubernetes paths against a real kube-apiserver (v1.20.2 with
//! etcd, `tests/real`), not the in-memory one. Here: the TokenReview path of a pod's first
//! certificate, as the control plane runs it — with its own ServiceAccount's token and the
//! RBAC of `deploy/rbac.yaml`, enforced by the server.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod real;

use meshfed_control::server::{ReviewedToken, TokenReviewer};
use meshfed_k8s::token_review::{AUDIENCE, KubeTokenReviewer};
use real::RealApi;

const POD: &str = "apiVersion: v1
kind: Pod
metadata: {name: echo-1, namespace: shop}
spec:
  serviceAccountName: echo
  automountServiceAccountToken: false
  containers: [{name: app, image: echo}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_api_server_vouches_for_a_pods_token_to_the_control_plane_under_its_rbac() {
    let Some(api) = RealApi::start() else {
        return;
    };
    let rbac = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rbac.yaml");
    api.kubectl(&["create", "namespace", "meshfed-system"]);
    api.kubectl(&["apply", "-f", rbac]);
    api.kubectl(&["create", "namespace", "shop"]);
    api.kubectl(&["create", "serviceaccount", "echo", "-n", "shop"]);
    api.kubectl(&["create", "serviceaccount", "nobody", "-n", "shop"]);
    api.kubectl_in(&["apply", "-f", "-"], Some(POD));
    // The control plane reviews with its own ServiceAccount's token, as in its pod.
    let control = api.token("meshfed-system", "meshfed-control", None, None);
    let reviewer = KubeTokenReviewer::new(api.client(&api.kubeconfig("control", &control)).await);
    // A pod's projected token for meshfed's audience: its account, its pod.
    let pod_token = api.token("shop", "echo", Some(AUDIENCE), Some("echo-1"));
    assert_eq!(
        reviewer.review(&pod_token).await,
        Ok(ReviewedToken {
            namespace: "shop".into(),
            service_account: "echo".into(),
            pod: Some("echo-1".into()),
        })
    );
    // A token for the API server's own audience, or not a token at all: nothing.
    let api_token = api.token("shop", "echo", None, Some("echo-1"));
    for (what, token) in [
        ("the API server's audience", api_token.as_str()),
        ("made up", "x.y.z"),
    ] {
        let e = reviewer.review(token).await.unwrap_err();
        assert_eq!(e.reason(), "TokenNotAuthenticated", "{what}: {e}");
    }
    // A token bound to no pod reviews, and says so (the control plane refuses it).
    let unbound = api.token("shop", "echo", Some(AUDIENCE), None);
    assert_eq!(reviewer.review(&unbound).await.unwrap().pod, None);
    // RBAC is the server's: an account without deploy/rbac.yaml's rule cannot review.
    let nobody = api.token("shop", "nobody", None, None);
    let outsider = KubeTokenReviewer::new(api.client(&api.kubeconfig("nobody", &nobody)).await);
    let e = outsider.review(&pod_token).await.unwrap_err();
    assert_eq!(e.reason(), "TokenReviewFailed", "{e}");
    assert!(e.to_string().contains("forbidden"), "{e}");
    // The pod goes (at once: no kubelet here confirms a graceful end): the token bound to it
    // proves nothing any more — once the API server's cache of successful authentications
    // (10 s in 1.20) lets go of it.
    api.kubectl(&[
        "delete",
        "pod",
        "echo-1",
        "-n",
        "shop",
        "--grace-period=0",
        "--force",
    ]);
    let gone = std::time::Instant::now();
    let e = loop {
        match reviewer.review(&pod_token).await {
            Err(e) => break e,
            Ok(_) => {
                assert!(
                    gone.elapsed() < std::time::Duration::from_secs(60),
                    "a deleted pod's token still proves it after 60 s"
                );
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    };
    assert_eq!(e.reason(), "TokenNotAuthenticated", "{e}");
    eprintln!(
        "a deleted pod's token refused {:?} after the deletion",
        gone.elapsed()
    );
}
