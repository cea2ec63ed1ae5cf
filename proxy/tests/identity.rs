//! The data path within one mesh, over real sockets and real mTLS on loopback: the echo
//! workload sees the caller's verified SPIFFE ID end to end; forged identity headers never
//! survive; wrong identities are refused on either side; requests spread round robin.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshfed_core::authz::{Action, Operation, Pattern, Policy, Rule, Source};
use meshfed_proxy::echo::{self, EchoConfig};
use meshfed_proxy::sidecar::{self, Endpoint, OutboundService, Running, SidecarConfig};
use meshfed_trust::CertificateAuthority;
use meshfed_trust::bundle::TrustBundleSet;
use meshfed_trust::verify::{self, Expect, SharedBundles, SvidResolver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const UI: &str = "spiffe://alpha.local/ns/web/sa/ui";
const ECHO: &str = "spiffe://alpha.local/ns/shop/sa/echo";
const HOST: &str = "echo.shop.svc.cluster.local";

fn bundles(ca: &CertificateAuthority) -> SharedBundles {
    let mut s = TrustBundleSet::new();
    s.insert(ca.bundle(1).unwrap()).unwrap();
    verify::shared(s)
}

fn resolver(ca: &CertificateAuthority, id: &str) -> Arc<SvidResolver> {
    let svid = ca
        .issue(
            &id.parse().unwrap(),
            Duration::from_secs(3600),
            SystemTime::now(),
        )
        .unwrap();
    Arc::new(SvidResolver::new(&svid, verify::provider()).unwrap())
}

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// An echo app behind a server sidecar; returns the sidecar (inbound address) and the echo task.
async fn server(
    ca: &CertificateAuthority,
    instance: &str,
    allow: Expect,
) -> (Running, tokio::task::JoinHandle<()>) {
    guarded(ca, instance, allow, vec![]).await
}

/// [`server`] with authorization policies.
async fn guarded(
    ca: &CertificateAuthority,
    instance: &str,
    allow: Expect,
    policies: Vec<Policy>,
) -> (Running, tokio::task::JoinHandle<()>) {
    let (app, task) = echo::start(
        any(),
        EchoConfig {
            mesh: "alpha".into(),
            service: "echo".into(),
            instance: instance.into(),
            ..EchoConfig::default()
        },
    )
    .await
    .unwrap();
    let cfg = SidecarConfig {
        outbound: None,
        inbound: Some(any()),
        app: Some(app),
        allow,
        services: vec![],
        policies,
    };
    (
        sidecar::start(cfg, resolver(ca, ECHO), bundles(ca))
            .await
            .unwrap(),
        task,
    )
}

async fn client(ca: &CertificateAuthority, id: &str, endpoints: Vec<Endpoint>) -> Running {
    let cfg = SidecarConfig {
        outbound: Some(any()),
        inbound: None,
        app: None,
        allow: Expect::AnyKnownDomain,
        services: vec![OutboundService {
            host: HOST.parse().unwrap(),
            endpoints,
        }],
        policies: vec![],
    };
    sidecar::start(cfg, resolver(ca, id), bundles(ca))
        .await
        .unwrap()
}

/// Sends a raw HTTP/1.1 request for `/hello?x=1`; returns status and body.
async fn get(addr: SocketAddr, host: &str, extra: &str) -> (u16, String) {
    request(addr, "GET", "/hello?x=1", host, extra).await
}

/// Sends a raw HTTP/1.1 request; returns status and body.
async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    host: &str,
    extra: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req =
        format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn body_json(body: &str) -> serde_json::Value {
    // Tolerate chunked framing: take the JSON object inside.
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map_or(body.len(), |e| e + 1);
    serde_json::from_str(&body[start..end]).unwrap_or(serde_json::Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_sees_the_callers_verified_identity() {
    let ca = CertificateAuthority::new("alpha.local".parse().unwrap(), SystemTime::now()).unwrap();
    let (srv, _e) = server(
        &ca,
        "echo-1",
        Expect::domain("alpha.local".parse().unwrap()),
    )
    .await;
    let cli = client(
        &ca,
        UI,
        vec![Endpoint {
            addr: srv.inbound.unwrap(),
            identity: ECHO.parse().unwrap(),
        }],
    )
    .await;
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
    let ca = CertificateAuthority::new("alpha.local".parse().unwrap(), SystemTime::now()).unwrap();
    // The server allows only one other caller.
    let (srv, _e) = server(
        &ca,
        "echo-1",
        Expect::id("spiffe://alpha.local/ns/web/sa/admin".parse().unwrap()),
    )
    .await;
    let cli = client(
        &ca,
        UI,
        vec![Endpoint {
            addr: srv.inbound.unwrap(),
            identity: ECHO.parse().unwrap(),
        }],
    )
    .await;
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
    let cfg = SidecarConfig {
        outbound: Some(any()),
        inbound: None,
        app: None,
        allow: Expect::AnyKnownDomain,
        services: vec![OutboundService {
            host: HOST.parse().unwrap(),
            endpoints: vec![Endpoint {
                addr: srv.inbound.unwrap(),
                identity: ECHO.parse().unwrap(),
            }],
        }],
        policies: vec![],
    };
    let mut both = TrustBundleSet::new();
    both.insert(ca.bundle(1).unwrap()).unwrap();
    both.insert(other.bundle(1).unwrap()).unwrap();
    let cli = sidecar::start(
        cfg,
        resolver(&other, "spiffe://gamma.local/ns/x/sa/y"),
        verify::shared(both),
    )
    .await
    .unwrap();
    let (status, body) = get(cli.outbound.unwrap(), HOST, "").await;
    assert!(status == 502 || status == 503, "{status} {body}");
    assert!(!body.contains("\"caller\""), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_round_robin() {
    let ca = CertificateAuthority::new("alpha.local".parse().unwrap(), SystemTime::now()).unwrap();
    let (s1, _e1) = server(&ca, "echo-1", Expect::AnyKnownDomain).await;
    let (s2, _e2) = server(&ca, "echo-2", Expect::AnyKnownDomain).await;
    let eps = vec![
        Endpoint {
            addr: s1.inbound.unwrap(),
            identity: ECHO.parse().unwrap(),
        },
        Endpoint {
            addr: s2.inbound.unwrap(),
            identity: ECHO.parse().unwrap(),
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
    use std::sync::atomic::Ordering::Relaxed;
    let ca = CertificateAuthority::new("alpha.local".parse().unwrap(), SystemTime::now()).unwrap();
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
    let ep = vec![Endpoint {
        addr: srv.inbound.unwrap(),
        identity: ECHO.parse().unwrap(),
    }];
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

    assert_eq!(srv.stats.allowed.load(Relaxed), 1);
    assert_eq!(srv.stats.denied.load(Relaxed), 9);
    assert_eq!(srv.stats.bad_requests.load(Relaxed), 2);
}
