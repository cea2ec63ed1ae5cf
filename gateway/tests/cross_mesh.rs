//! Two meshes with their own CAs and trust domains, over real sockets on loopback: a client in
//! alpha calls a service exported by beta through alpha's egress and beta's ingress gateway
//! (TCP + rustls tunnel). The echo in beta sees the alpha workload's SPIFFE ID; what crosses
//! the gateways stays TLS end to end; and the ingress refuses — before opening any upstream
//! connection — names not exported to that peer, names exported to another peer, a missing or
//! malformed ClientHello, and tunnels from the wrong identity or an unknown CA.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use meshfed_core::traffic::TrafficPolicy;
use meshfed_core::{Hostname, SpiffeId};
use meshfed_gateway::relay::{self, EgressRoute, Gateway, IngressPeer};
use meshfed_proxy::sidecar::{
    self, Endpoint, HttpVersion, OutboundService, Running, SidecarConfig,
};
use meshfed_trust::CertificateAuthority;
use meshfed_trust::bundle::TrustBundleSet;
use meshfed_trust::ca::DEFAULT_SVID_TTL;
use meshfed_trust::verify::{self, Expect, SharedBundles, SvidResolver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const UI: &str = "spiffe://alpha.local/ns/web/sa/ui";
const ECHO: &str = "spiffe://beta.local/ns/shop/sa/echo";
const ALPHA_EGRESS: &str = "spiffe://alpha.local/ns/alpha-system/sa/egress-beta-service-account";
const BETA_INGRESS: &str = "spiffe://beta.local/ns/beta-system/sa/ingress-alpha-service-account";
const EXPORTED: &str = "echo.shop.svc.beta-exports.local";
const LOCAL_NAME: &str = "echo.shop.svc.beta.remote";

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn svid(ca: &CertificateAuthority, id: &str) -> Arc<SvidResolver> {
    let s = ca
        .issue(&id.parse().unwrap(), DEFAULT_SVID_TTL, SystemTime::now())
        .unwrap();
    Arc::new(SvidResolver::new(&s, verify::provider()).unwrap())
}

/// Bundles of every given CA (each mesh trusts its own and its peer's, each under its domain).
fn bundles(cas: &[&CertificateAuthority]) -> SharedBundles {
    let mut set = TrustBundleSet::new();
    for ca in cas {
        set.insert(ca.current_bundle().unwrap()).unwrap();
    }
    verify::shared(set)
}

fn config(
    outbound: bool,
    inbound: Option<SocketAddr>,
    services: Vec<OutboundService>,
) -> SidecarConfig {
    SidecarConfig {
        outbound: outbound.then(any),
        inbound: inbound.map(|_| any()),
        app: inbound,
        app_protocol: HttpVersion::Http1,
        allow: Expect::AnyKnownDomain,
        services,
        policies: vec![],
        service: "shop/echo".into(),
        admin: None,
        tcp: vec![],
        tcp_ports: vec![],
        names: vec![],
    }
}

/// A TCP relay that records the first bytes each connection sends onward.
async fn tap(target: SocketAddr) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let l = tokio::net::TcpListener::bind(any()).await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut a, _) = l.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let mut first = vec![0u8; 64];
                let n = a.read(&mut first).await.unwrap_or(0);
                first.truncate(n);
                log.lock().unwrap().push(first.clone());
                let mut b = tokio::net::TcpStream::connect(target).await.unwrap();
                b.write_all(&first).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
            });
        }
    });
    (addr, seen)
}

struct World {
    alpha: CertificateAuthority,
    beta: CertificateAuthority,
    server: Running,
    ingress: Gateway,
    egress: Gateway,
    client: Running,
    /// First bytes each ingress → server-sidecar connection carried.
    tapped: Arc<Mutex<Vec<Vec<u8>>>>,
    _echo: tokio::task::JoinHandle<()>,
}

async fn world(
    extra_exports: BTreeMap<Hostname, Vec<SocketAddr>>,
    gamma: Option<IngressPeer>,
) -> World {
    world_with(Duration::ZERO, extra_exports, gamma).await
}

/// [`world`] with an echo that takes `latency` to answer.
async fn world_with(
    latency: Duration,
    extra_exports: BTreeMap<Hostname, Vec<SocketAddr>>,
    gamma: Option<IngressPeer>,
) -> World {
    let alpha =
        CertificateAuthority::new("alpha.local".parse().unwrap(), SystemTime::now()).unwrap();
    let beta = CertificateAuthority::new("beta.local".parse().unwrap(), SystemTime::now()).unwrap();
    let both = bundles(&[&alpha, &beta]);
    // beta: echo behind its sidecar, reached through a tap, exported to alpha by its ingress.
    let echo_cfg = meshfed_proxy::echo::EchoConfig {
        mesh: "beta".into(),
        service: "echo".into(),
        instance: "echo-1".into(),
        latency,
        ..Default::default()
    };
    let (app, echo) = meshfed_proxy::echo::start(any(), echo_cfg).await.unwrap();
    let server = sidecar::start(
        config(false, Some(app), vec![]),
        svid(&beta, ECHO),
        both.clone(),
    )
    .await
    .unwrap();
    let (tapped_addr, tapped) = tap(server.inbound.unwrap()).await;
    let mut exports = extra_exports;
    exports.insert(EXPORTED.parse().unwrap(), vec![tapped_addr]);
    let mut peers = vec![IngressPeer {
        name: "alpha".into(),
        client_id: ALPHA_EGRESS.parse().unwrap(),
        exports,
    }];
    peers.extend(gamma);
    let ingress = relay::start_ingress(
        any(),
        Arc::new(RwLock::new(Arc::new(peers))),
        svid(&beta, BETA_INGRESS),
        both.clone(),
    )
    .await
    .unwrap();
    // alpha: an egress that knows beta's exports, and a client sidecar importing one of them.
    let routes: BTreeMap<Hostname, EgressRoute> = ["echo", "secret", "gammas"]
        .iter()
        .map(|n| {
            (
                format!("{n}.shop.svc.beta-exports.local").parse().unwrap(),
                EgressRoute {
                    peer: "beta".into(),
                    ingress: ingress.addr,
                    ingress_id: BETA_INGRESS.parse().unwrap(),
                },
            )
        })
        .collect();
    let egress = relay::start_egress(
        any(),
        Arc::new(RwLock::new(Arc::new(routes))),
        svid(&alpha, ALPHA_EGRESS),
        both.clone(),
    )
    .await
    .unwrap();
    let imported = |local: &str, sni: &str| OutboundService {
        host: local.parse().unwrap(),
        endpoints: vec![Endpoint {
            addr: egress.addr,
            identity: ECHO.parse().unwrap(),
            labels: BTreeMap::new(),
            sni: Some(sni.parse().unwrap()),
        }],
        traffic: TrafficPolicy::default(),
        protocol: HttpVersion::Http1,
    };
    let client = sidecar::start(
        config(
            true,
            None,
            vec![
                imported(LOCAL_NAME, EXPORTED),
                imported(
                    "secret.shop.svc.beta.remote",
                    "secret.shop.svc.beta-exports.local",
                ),
                imported(
                    "gammas.shop.svc.beta.remote",
                    "gammas.shop.svc.beta-exports.local",
                ),
                imported(
                    "unknown.shop.svc.beta.remote",
                    "unknown.shop.svc.beta-exports.local",
                ),
            ],
        ),
        svid(&alpha, UI),
        both,
    )
    .await
    .unwrap();
    World {
        alpha,
        beta,
        server,
        ingress,
        egress,
        client,
        tapped,
        _echo: echo,
    }
}

async fn get(addr: SocketAddr, host: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /who HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_workload_sees_the_callers_identity_through_both_gateways() {
    let w = world(BTreeMap::new(), None).await;
    let out = w.client.outbound.unwrap();
    for _ in 0..3 {
        let (status, body) = get(out, LOCAL_NAME).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(&format!("\"caller\":\"{UI}\"")), "{body}");
        assert!(body.contains("\"mesh\":\"beta\""), "{body}");
    }
    // Between the gateways and on to the server sidecar, the bytes are the client sidecar's own
    // TLS: every tapped connection starts with a TLS handshake record, never with HTTP.
    let tapped = w.tapped.lock().unwrap().clone();
    assert!(!tapped.is_empty());
    for first in &tapped {
        assert_eq!(first.first(), Some(&22), "not TLS: {first:?}");
        assert!(!String::from_utf8_lossy(first).contains("GET /who"));
    }
    assert_eq!(
        w.ingress
            .stats
            .upstream_connections
            .load(std::sync::atomic::Ordering::Relaxed),
        tapped.len() as u64
    );
    let _ = (&w.alpha, &w.beta, &w.server, &w.egress);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_not_exported_to_the_caller_never_reach_an_endpoint() {
    // `gammas` is exported, but to another peer (gamma); `secret` is exported to nobody.
    let gamma = IngressPeer {
        name: "gamma".into(),
        client_id: "spiffe://gamma.local/ns/gamma-system/sa/egress-beta-service-account"
            .parse()
            .unwrap(),
        exports: [(
            "gammas.shop.svc.beta-exports.local".parse().unwrap(),
            vec![any()],
        )]
        .into(),
    };
    let w = world(BTreeMap::new(), Some(gamma)).await;
    let out = w.client.outbound.unwrap();
    let before = w
        .ingress
        .stats
        .upstream_connections
        .load(std::sync::atomic::Ordering::Relaxed);
    for host in ["secret.shop.svc.beta.remote", "gammas.shop.svc.beta.remote"] {
        let (status, body) = get(out, host).await;
        assert!(status >= 500, "{host}: {body}");
    }
    // Each attempt of each call (the client sidecar retries failed handshakes) is refused at
    // the ingress.
    let denied = w.ingress.stats.denied("NotExportedToPeer");
    assert!((2..=6).contains(&denied), "{denied}");
    // A name no peer exports stops at the egress.
    let (status, _) = get(out, "unknown.shop.svc.beta.remote").await;
    assert!(status >= 500);
    assert!(w.egress.stats.denied("NoPeerExportsName") >= 1);
    assert_eq!(
        w.ingress
            .stats
            .upstream_connections
            .load(std::sync::atomic::Ordering::Relaxed),
        before
    );
    // Legitimate traffic is unaffected.
    let (status, body) = get(out, LOCAL_NAME).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_refuses_wrong_tunnels_and_bad_client_hellos() {
    let w = world(BTreeMap::new(), None).await;
    let provider = verify::provider();
    let both = bundles(&[&w.alpha, &w.beta]);
    // A tunnel from a client presenting `who` (its CA's SVID), sending `payload` inside.
    let tunnel = |who: Arc<SvidResolver>, payload: Vec<u8>| {
        let (provider, both, addr) = (provider.clone(), both.clone(), w.ingress.addr);
        async move {
            let verifier = meshfed_trust::SpiffeServerVerifier::new(
                both,
                Expect::id(BETA_INGRESS.parse::<SpiffeId>().unwrap()),
                provider.clone(),
            );
            let tls = verify::client_config(who, Arc::new(verifier), provider).unwrap();
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("ingress").unwrap();
            let Ok(mut s) = tokio_rustls::TlsConnector::from(Arc::new(tls))
                .connect(name, tcp)
                .await
            else {
                return;
            };
            let _ = s.write_all(&payload).await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
        }
    };
    let egress_id = || svid(&w.alpha, ALPHA_EGRESS);
    // Right identity, but no ClientHello inside: plain HTTP, then a truncated-and-closed hello.
    tunnel(egress_id(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()).await;
    tunnel(egress_id(), vec![22, 3, 1, 0, 200, 1, 0]).await;
    // Wrong identity from the right CA (a workload, not alpha's egress gateway).
    tunnel(svid(&w.alpha, UI), vec![]).await;
    // An unknown CA claiming alpha's egress identity.
    let rogue =
        CertificateAuthority::new("alpha.local".parse().unwrap(), SystemTime::now()).unwrap();
    tunnel(svid(&rogue, ALPHA_EGRESS), vec![]).await;
    let s = &w.ingress.stats;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.denied("TunnelHandshakeFailed") < 2
        || s.denied("NotTls") < 1
        || s.denied("ClientClosed") < 1
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            s.denials.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        s.upstream_connections
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // The client path still works.
    let (status, body) = get(w.client.outbound.unwrap(), LOCAL_NAME).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_ingress_refuses_new_connections_and_lets_streams_in_flight_finish() {
    let w = world_with(Duration::from_millis(1500), BTreeMap::new(), None).await;
    let out = w.client.outbound.unwrap();
    let in_flight = tokio::spawn(get(out, LOCAL_NAME));
    let stats = w.ingress.stats.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stats.active.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request never reached the ingress"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let addr = w.ingress.addr;
    let World { ingress, .. } = w;
    let drain = tokio::spawn(ingress.drain(Duration::from_secs(3)));
    // The listener is gone at once: new connections are refused (and go to another replica).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the draining ingress still accepts"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The stream in flight finishes normally.
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!("\"caller\":\"{UI}\"")), "{body}");
    // What is left open after the deadline is at most the idle pooled tunnel of that request.
    assert!(drain.await.unwrap() <= 1);
}
