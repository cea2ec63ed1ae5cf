//! The inbound listener answers only to the names its service is known by (its hostname and
//! the names it is exported under): a ClientHello naming another service is refused at the
//! handshake (SEC-GW-3, domain fronting through a gateway), counted, and an update can change
//! the names without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use common::*;
use meshfed_core::Hostname;
use meshfed_core::traffic::TrafficPolicy;
use meshfed_proxy::sidecar::{self, Endpoint, SidecarConfig};

const EXPORTED: &str = "echo.shop.svc.beta-exports.local";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_for_another_service_is_refused() {
    let ca = alpha_ca();
    let (app, _t) = meshfed_proxy::echo::start(any(), echo_config("echo-1"))
        .await
        .unwrap();
    let mut cfg = SidecarConfig {
        names: vec![HOST.parse().unwrap(), EXPORTED.parse().unwrap()],
        ..server_config(app)
    };
    let srv = sidecar::start(cfg.clone(), resolver(&ca, ECHO), bundles(&ca))
        .await
        .unwrap();
    let with_sni = |sni: Option<&str>| Endpoint {
        sni: sni.map(|s| s.parse::<Hostname>().unwrap()),
        priority: 0,
        healthy: true,
        ..endpoint_of(&srv)
    };
    // The service's own name (sent by default) and its exported name are served.
    for sni in [None, Some(EXPORTED)] {
        let c = client_with(&ca, UI, vec![with_sni(sni)], TrafficPolicy::default()).await;
        let (status, body) = get(c.outbound.unwrap(), HOST, "").await;
        assert_eq!(status, 200, "{sni:?}: {body}");
    }
    // Another service's name is refused at the handshake.
    let fronted = client_with(
        &ca,
        UI,
        vec![with_sni(Some("admin.shop.svc.cluster.local"))],
        TrafficPolicy::default(),
    )
    .await;
    let (status, body) = get(fronted.outbound.unwrap(), HOST, "").await;
    assert_eq!(status, 503, "{body}");
    let refused = r#"meshfed_tls_handshakes_total{direction="inbound",result="error"} "#;
    assert!(metric(&srv.stats.encode(), refused) >= 1);
    // With no names configured, any name is answered (an update, no restart).
    cfg.names.clear();
    srv.update(&cfg).unwrap();
    let (status, body) = get(fronted.outbound.unwrap(), HOST, "").await;
    assert_eq!(status, 200, "{body}");
}
