//! Locality failover inside one sidecar: a service's local endpoints (priority 0) and a peer's
//! (a lower priority, as `importAsLocal` adds them). While the local apps are down — their
//! sidecars answer "not delivered" — every request is retried onto the peer and succeeds, the
//! local endpoints are ejected without any outlier settings, and traffic comes back once the
//! local apps return.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;
use meshfed_proxy::echo;
use meshfed_proxy::sidecar::{self, Running};
use meshfed_trust::CertificateAuthority;
use meshfed_trust::verify::Expect;

/// A server sidecar whose app is expected at `app` (nothing needs to listen there yet).
async fn sidecar_for(ca: &CertificateAuthority, app: std::net::SocketAddr) -> Running {
    let cfg = server_config(app);
    sidecar::start(cfg, resolver(ca, ECHO), bundles(ca))
        .await
        .unwrap()
}

fn free_addr() -> std::net::SocketAddr {
    meshfed_test_support::free_addr("127.0.0.1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_fails_over_to_the_peer_without_errors_and_comes_back() {
    let ca = alpha_ca();
    // Two local endpoints whose apps are down, and the peer's.
    let (a1, a2) = (free_addr(), free_addr());
    let (l1, l2) = (sidecar_for(&ca, a1).await, sidecar_for(&ca, a2).await);
    let (remote, _r) = echo_server(
        &ca,
        echo::EchoConfig {
            mesh: "beta".into(),
            ..echo_config("beta-1")
        },
        Expect::AnyKnownDomain,
        vec![],
    )
    .await;
    let mut eps = vec![endpoint_of(&l1), endpoint_of(&l2), endpoint_of(&remote)];
    eps[2].priority = 4;
    let cli = client(&ca, UI, eps).await;
    let out = cli.outbound.unwrap();
    let mesh_of = |body: &str| body_json(body)["mesh"].as_str().unwrap_or("").to_owned();
    let mut failures = Vec::new();
    for _ in 0..40 {
        let (status, body) = get(out, HOST, "").await;
        if status != 200 {
            failures.push(body);
            continue;
        }
        assert_eq!(mesh_of(&body), "beta", "{body}");
    }
    assert!(failures.is_empty(), "{failures:?}");
    let metrics = cli.stats.encode();
    assert!(
        metric(&metrics, "meshfed_outlier_ejections_total ") >= 2,
        "both local endpoints ejected:\n{metrics}"
    );
    // Their ejection ends while the apps are still down: the next requests find them down
    // again and are still served by the peer.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    for _ in 0..20 {
        let (status, body) = get(out, HOST, "").await;
        assert_eq!(status, 200, "after the ejection ended: {body}");
        assert_eq!(mesh_of(&body), "beta", "{body}");
    }
    // The local apps come back: once their ejection ends, the local priority takes over.
    let (_e1, _t1) = echo::start(a1, echo_config("alpha-1")).await.unwrap();
    let (_e2, _t2) = echo::start(a2, echo_config("alpha-2")).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut local_in_a_row = 0;
    while local_in_a_row < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "traffic never came back to the local endpoints"
        );
        let (status, body) = get(out, HOST, "").await;
        assert_eq!(status, 200, "{body}");
        if mesh_of(&body) == "alpha" {
            local_in_a_row += 1;
        } else {
            local_in_a_row = 0;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let _ = (&l1, &l2, &remote);
}
