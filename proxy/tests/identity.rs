//! The data path within one mesh, over real sockets and real mTLS on loopback: the echo
//! workload sees the caller's verified SPIFFE ID end to end; forged identity headers never
//! survive; wrong identities are refused on either side; requests spread round robin.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::*;
use meshfed_core::authz::{Action, Operation, Pattern, Policy, Rule, Source};
use meshfed_core::traffic::TrafficPolicy;
use meshfed_proxy::echo::EchoConfig;
use meshfed_proxy::sidecar::{Endpoint, SidecarError};
use meshfed_trust::CertificateAuthority;
use meshfed_trust::bundle::TrustBundleSet;
use meshfed_trust::verify::{self, Expect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_sees_the_callers_verified_identity() {
    let ca = alpha_ca();
    let (srv, _e) = domain_server(&ca, "echo-1").await;
    let cli = client(&ca, UI, vec![endpoint_of(&srv)]).await;
    let out = cli.outbound.unwrap();
    let (status, body) = get(out, HOST, "").await;
    assert_eq!(status, 200, "{body}");
    let v = body_json(&body);
    assert_eq!(v["caller"], UI, "{v}");
    assert_eq!(v["path"], "/hello");
    assert_eq!(v["service"], "echo");
    // A forged identity header from the app never reaches the server app, also when the app
    // names it in Connection (H12); case does not matter.
    let (_, body) = get(out, "Echo.Shop.svc.cluster.local:8080", "x-meshfed-client-id: spiffe://alpha.local/ns/kube-system/sa/admin\r\nX-Meshfed-Client-Id: evil\r\n").await;
    assert_eq!(body_json(&body)["caller"], UI, "{body}");
    // Unknown service.
    let (status, body) = get(out, "nope.shop.svc.cluster.local", "").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.starts_with("NoRoute"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_identities_are_refused_on_either_side() {
    let ca = alpha_ca();
    // The server allows only one other caller.
    let (srv, _e) = server(
        &ca,
        "echo-1",
        Expect::id("spiffe://alpha.local/ns/web/sa/admin".parse().unwrap()),
    )
    .await;
    let cli = client(&ca, UI, vec![endpoint_of(&srv)]).await;
    let (status, body) = get(cli.outbound.unwrap(), HOST, "").await;
    assert!(status == 502 || status == 503, "{status} {body}");
    assert!(!body.contains("\"caller\""), "the app was reached: {body}");
    // The client expects another identity to serve the service.
    let (srv, _e) = server(&ca, "echo-1", Expect::AnyKnownDomain).await;
    let cli = client(
        &ca,
        UI,
        vec![Endpoint {
            addr: srv.inbound.unwrap(),
            identity: "spiffe://alpha.local/ns/shop/sa/other".parse().unwrap(),
            labels: Default::default(),
            sni: None,
            priority: 0,
            healthy: true,
        }],
    )
    .await;
    let (status, body) = get(cli.outbound.unwrap(), HOST, "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("IdentityNotAllowed"), "{body}");
    // A caller from a domain the server holds no bundle for.
    let other =
        CertificateAuthority::new("gamma.local".parse().unwrap(), SystemTime::now()).unwrap();
    let (srv, _e) = server(&ca, "echo-1", Expect::AnyKnownDomain).await;
    let mut both = TrustBundleSet::new();
    both.insert(ca.bundle(1).unwrap()).unwrap();
    both.insert(other.bundle(1).unwrap()).unwrap();
    let cli = client_sidecar(
        resolver(&other, "spiffe://gamma.local/ns/x/sa/y"),
        verify::shared(both),
        vec![endpoint_of(&srv)],
        TrafficPolicy::default(),
    )
    .await;
    let (status, body) = get(cli.outbound.unwrap(), HOST, "").await;
    assert!(status == 502 || status == 503, "{status} {body}");
    assert!(!body.contains("\"caller\""), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_round_robin() {
    let ca = alpha_ca();
    let (s1, _e1) = server(&ca, "echo-1", Expect::AnyKnownDomain).await;
    let (s2, _e2) = server(&ca, "echo-2", Expect::AnyKnownDomain).await;
    let eps = vec![
        Endpoint {
            addr: s1.inbound.unwrap(),
            identity: ECHO.parse().unwrap(),
            labels: Default::default(),
            sni: None,
            priority: 0,
            healthy: true,
        },
        Endpoint {
            addr: s2.inbound.unwrap(),
            identity: ECHO.parse().unwrap(),
            labels: Default::default(),
            sni: None,
            priority: 0,
            healthy: true,
        },
    ];
    let cli = client(&ca, UI, eps).await;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..10 {
        let (status, body) = get(cli.outbound.unwrap(), HOST, "").await;
        assert_eq!(status, 200);
        *seen
            .entry(
                body_json(&body)["instance"]
                    .as_str()
                    .unwrap_or("?")
                    .to_owned(),
            )
            .or_insert(0) += 1;
    }
    assert_eq!(seen.get("echo-1"), Some(&5), "{seen:?}");
    assert_eq!(seen.get("echo-2"), Some(&5), "{seen:?}");
}

fn policy(name: &str, action: Action, rule: Rule) -> Policy {
    Policy {
        name: name.into(),
        action,
        rules: vec![rule],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_checks_the_normalized_path_it_forwards() {
    let ca = alpha_ca();
    let policies = vec![
        policy(
            "deny-admin",
            Action::Deny,
            Rule {
                from: vec![],
                to: vec![Operation {
                    paths: vec![Pattern::parse("/admin"), Pattern::parse("/admin/*")],
                    methods: vec![],
                }],
            },
        ),
        policy(
            "web-reads",
            Action::Allow,
            Rule {
                from: vec![Source {
                    principals: vec![Pattern::parse("alpha.local/ns/web/sa/*")],
                    ..Source::default()
                }],
                to: vec![Operation {
                    paths: vec![],
                    methods: vec!["GET".into()],
                }],
            },
        ),
    ];
    let (srv, _e) = guarded(&ca, "echo-1", Expect::AnyKnownDomain, policies).await;
    let ep = vec![endpoint_of(&srv)];
    let ui = client(&ca, UI, ep.clone()).await;
    let ui = ui.outbound.unwrap();

    // Allowed: the app gets the normalized path and the original query.
    let (status, body) = request(ui, "GET", "/a/./b//c;v=1?q=%2F&x", HOST, "").await;
    assert_eq!(status, 200, "{body}");
    let v = body_json(&body);
    assert_eq!(v["path"], "/a/b/c", "{body}");
    assert_eq!(v["query"], "q=%2F&x", "{body}");

    // Every spelling of /admin is denied by the DENY policy, before the app.
    for target in [
        "/admin",
        "//admin",
        "/a/../admin",
        "/x/%2e%2e/admin",
        "/%61dmin",
        "/admin;x=1",
        "/admin/./users",
    ] {
        let (status, body) = request(ui, "GET", target, HOST, "").await;
        assert_eq!(status, 403, "{target}: {body}");
        assert!(
            body.starts_with("AccessDenied") && body.contains("deny-admin"),
            "{target}: {body}"
        );
    }
    // Paths that cannot be normalized safely are refused outright.
    for (target, reason) in [
        ("/admin%2fusers", "EncodedSeparator"),
        ("/../admin", "PathAboveRoot"),
    ] {
        let (status, body) = request(ui, "GET", target, HOST, "").await;
        assert_eq!(status, 400, "{target}: {body}");
        assert!(body.starts_with(reason), "{target}: {body}");
    }
    // The ALLOW policy covers GET from web only.
    let (status, body) = request(ui, "POST", "/hello", HOST, "Content-Length: 0\r\n").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("NoAllowPolicyMatched"), "{body}");
    let batch = client(&ca, "spiffe://alpha.local/ns/batch/sa/job", ep).await;
    let (status, body) = get(batch.outbound.unwrap(), HOST, "").await;
    assert_eq!(status, 403, "{body}");

    assert_eq!(srv.stats.allowed.get(), 1);
    assert_eq!(srv.stats.denied.get(), 9);
    assert_eq!(srv.stats.bad_requests.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_reports_health_and_metrics() {
    let ca = alpha_ca();
    let deny = Policy {
        name: "no-admin".into(),
        action: Action::Deny,
        rules: vec![Rule {
            from: vec![],
            to: vec![Operation {
                paths: vec![Pattern::parse("/admin")],
                methods: vec![],
            }],
        }],
    };
    let (srv, echo_task) = guarded(&ca, "echo-1", Expect::AnyKnownDomain, vec![deny]).await;
    let admin = srv.admin.unwrap();
    let cli = client(&ca, UI, vec![endpoint_of(&srv)]).await;
    for target in ["/hello", "/hello", "/admin"] {
        request(cli.outbound.unwrap(), "GET", target, HOST, "").await;
    }
    assert_eq!(
        request(admin, "GET", "/healthz/live", "admin", "").await.0,
        200
    );
    assert_eq!(
        request(admin, "GET", "/healthz/ready", "admin", "").await.0,
        200
    );
    let (status, metrics) = request(admin, "GET", "/metrics", "admin", "").await;
    assert_eq!(status, 200);
    for line in [
        "meshfed_authz_denied_total 1",
        "meshfed_authz_allowed_total 2",
        r#"meshfed_requests_total{direction="inbound",service="shop/echo",code="2xx"} 2"#,
        r#"meshfed_requests_total{direction="inbound",service="shop/echo",code="4xx"} 1"#,
        r#"meshfed_request_duration_seconds_count{direction="inbound",service="shop/echo"} 3"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    assert!(metrics.trim_end().ends_with("# EOF"), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l
                .starts_with(r#"meshfed_tls_handshakes_total{direction="inbound",result="ok"} "#)),
        "{metrics}"
    );
    // The client's side counts per called service.
    let ours = cli.stats.encode();
    let line =
        format!(r#"meshfed_requests_total{{direction="outbound",service="{HOST}",code="4xx"}} 1"#);
    assert!(ours.lines().any(|l| l == line), "no {line:?} in\n{ours}");
    // Without its app the workload is not ready.
    echo_task.abort();
    let _ = echo_task.await;
    let (status, body) = request(admin, "GET", "/healthz/ready", "admin", "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("AppUnavailable"), "{body}");
    assert_eq!(request(admin, "GET", "/nope", "admin", "").await.0, 404);
}

/// The count in the metric line starting with `prefix`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reused() {
    let ca = alpha_ca();
    let (srv, _e) = server(&ca, "echo-1", Expect::AnyKnownDomain).await;
    let cli = client(&ca, UI, vec![endpoint_of(&srv)]).await;
    let n = 20;
    for _ in 0..n {
        let (status, body) = get(cli.outbound.unwrap(), HOST, "").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body_json(&body)["caller"], UI, "{body}");
    }
    // A connection rejoins its pool as the last of a response body is passed on, before the
    // client has it: one after another, the requests share one connection.
    let ok = r#"meshfed_tls_handshakes_total{direction="outbound",result="ok"} "#;
    let handshakes = metric(&cli.stats.encode(), ok);
    assert_eq!(handshakes, 1, "{handshakes} handshakes for {n} requests");
    let inbound = r#"meshfed_tls_handshakes_total{direction="inbound",result="ok"} "#;
    assert_eq!(metric(&srv.stats.encode(), inbound), handshakes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_apply_without_dropping_requests_in_flight() {
    let ca = alpha_ca();
    let slow = EchoConfig {
        latency: Duration::from_secs(1),
        ..echo_config("one")
    };
    let (one, _a) = echo_server(&ca, slow, Expect::AnyKnownDomain, vec![]).await;
    let (two, _b) = server(&ca, "two", Expect::AnyKnownDomain).await;
    let c = client(&ca, UI, vec![endpoint_of(&one)]).await;
    let addr = c.outbound.unwrap();
    let in_flight = tokio::spawn(async move { get(addr, HOST, "").await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.stats.upstream_active.get() < 1 {
        assert!(Instant::now() < deadline, "the first request never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Move the service to the other endpoint while a request is on the first.
    c.update(&client_config(
        vec![endpoint_of(&two)],
        TrafficPolicy::default(),
    ))
    .unwrap();
    let (status, body) = get(addr, HOST, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body_json(&body)["instance"], "two", "{body}");
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body_json(&body)["instance"], "one", "{body}");
    // A change the running sidecar cannot make is refused and changes nothing.
    let mut moved = client_config(vec![endpoint_of(&one)], TrafficPolicy::default());
    moved.admin = Some(any());
    assert!(matches!(
        c.update(&moved),
        Err(SidecarError::ListenerChange)
    ));
    let (_, body) = get(addr, HOST, "").await;
    assert_eq!(body_json(&body)["instance"], "two", "{body}");
}

/// A workload that skips its sidecar and speaks to a server sidecar's inbound listener itself,
/// with its own SVID, still cannot claim another identity: every copy of the identity header
/// it sends is replaced by its verified one, also when it names the header in `Connection`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_identity_headers_sent_straight_to_the_inbound_are_replaced() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = alpha_ca();
    let (srv, _e) = domain_server(&ca, "echo-1").await;
    let verifier = meshfed_trust::SpiffeServerVerifier::new(
        bundles(&ca),
        Expect::Ids([ECHO.parse().unwrap()].into()),
        verify::provider(),
    );
    let mut tls =
        verify::client_config(resolver(&ca, UI), verifier.into(), verify::provider()).unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    for connection in ["close", "x-meshfed-client-id, close"] {
        let tcp = tokio::net::TcpStream::connect(srv.inbound.unwrap())
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from(HOST).unwrap();
        let mut s = tls.connect(name, tcp).await.unwrap();
        let req = format!(
            "GET /whoami HTTP/1.1\r\nHost: {HOST}\r\n\
             x-meshfed-client-id: spiffe://alpha.local/ns/kube-system/sa/admin\r\n\
             Connection: {connection}\r\nX-Meshfed-Client-Id: evil\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp).await;
        let resp = String::from_utf8_lossy(&resp);
        let (head, body) = resp.split_once("\r\n\r\n").expect("a response");
        assert!(head.starts_with("HTTP/1.1 200"), "{resp}");
        assert_eq!(
            body_json(body)["caller"],
            UI,
            "Connection: {connection}: {resp}"
        );
    }
}

/// Defence in depth behind the ingress: a caller from a mesh the service is not exported to is
/// refused at the server sidecar's own handshake even when it reaches the sidecar directly
/// (flat network, misrouted traffic) — though the server holds that mesh's bundle, as it does
/// when the mesh peers with it for other services — and the refusal is counted with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_of_a_mesh_the_service_is_not_exported_to_is_refused_at_the_sidecar() {
    let ca = alpha_ca();
    let now = SystemTime::now();
    let beta = CertificateAuthority::new("beta.local".parse().unwrap(), now).unwrap();
    let gamma = CertificateAuthority::new("gamma.local".parse().unwrap(), now).unwrap();
    let mut all = TrustBundleSet::new();
    for c in [&ca, &beta, &gamma] {
        all.insert(c.bundle(1).unwrap()).unwrap();
    }
    let (app, _echo) = meshfed_proxy::echo::start(any(), echo_config("echo-1"))
        .await
        .unwrap();
    // What `config::from_mesh` gives a service exported to beta only.
    let allowed = [ca.trust_domain().clone(), beta.trust_domain().clone()];
    let cfg = meshfed_proxy::sidecar::SidecarConfig {
        allow: Expect::TrustDomains(allowed.into()),
        admin: Some(any()),
        ..server_config(app)
    };
    let srv = meshfed_proxy::sidecar::start(cfg, resolver(&ca, ECHO), verify::shared(all.clone()))
        .await
        .unwrap();
    for (caller_ca, id, served) in [
        (&beta, "spiffe://beta.local/ns/web/sa/ui", true),
        (&gamma, "spiffe://gamma.local/ns/web/sa/ui", false),
    ] {
        let cli = client_sidecar(
            resolver(caller_ca, id),
            verify::shared(all.clone()),
            vec![endpoint_of(&srv)],
            TrafficPolicy::default(),
        )
        .await;
        let (status, body) = get(cli.outbound.unwrap(), HOST, "").await;
        if served {
            assert_eq!(status, 200, "{body}");
            assert!(body.contains(id), "{body}");
        } else {
            assert!(status == 502 || status == 503, "{status} {body}");
            assert!(!body.contains("\"caller\""), "the app was reached: {body}");
        }
    }
    let m = srv.stats.encode();
    let refused = r#"meshfed_inbound_refusals_total{reason="IdentityNotAllowed"} "#;
    assert!(metric(&m, refused) >= 1, "{m}");
}
