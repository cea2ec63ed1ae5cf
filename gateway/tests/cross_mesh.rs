//! Two meshes with their own CAs and trust domains, over real sockets on loopback: a client in
//! alpha calls a service exported by beta through alpha's egress and beta's ingress gateway,
//! over each tunnel transport (TCP + rustls, QUIC). The echo in beta sees the alpha workload's
//! SPIFFE ID; what crosses the gateways stays TLS end to end; the ingress refuses — before
//! opening any upstream connection — names not exported to that peer, names exported to another
//! peer, a missing, malformed or oversized ClientHello, and tunnels from the wrong identity or
//! an unknown CA; either gateway can be restarted under load; probes report reachability and RTT.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use meshfed_core::traffic::TrafficPolicy;
use meshfed_core::{Hostname, SpiffeId};
use meshfed_gateway::relay::{
    self, EgressOptions, EgressRoute, Gateway, IngressOptions, IngressPeer,
};
use meshfed_gateway::tunnel::{PeerIdentity, Transport};
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
        idle_timeout: meshfed_proxy::idle::IDLE_TIMEOUT,
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
    /// What restarting a gateway in place needs.
    both: SharedBundles,
    ingress_peers: Arc<RwLock<Arc<Vec<IngressPeer>>>>,
    routes: Arc<RwLock<Arc<BTreeMap<Hostname, EgressRoute>>>>,
    reset_key: [u8; 32],
    transport: Transport,
    _echo: tokio::task::JoinHandle<()>,
}

impl World {
    fn ingress_opts(&self) -> IngressOptions {
        IngressOptions {
            quic: true,
            reset_key: Some(self.reset_key),
            ..IngressOptions::default()
        }
    }

    /// Starts the ingress again at its old address.
    async fn restart_ingress(&mut self) {
        self.ingress.stop();
        let (addr, peers, svid, both, opts) = (
            self.ingress.addr,
            self.ingress_peers.clone(),
            svid(&self.beta, BETA_INGRESS),
            self.both.clone(),
            self.ingress_opts(),
        );
        self.ingress = rebind(self.transport, || {
            relay::start_ingress(
                addr,
                peers.clone(),
                svid.clone(),
                both.clone(),
                opts.clone(),
            )
        })
        .await;
    }

    async fn restart_egress(&mut self) {
        self.egress.stop();
        let (addr, routes, svid, both, transport) = (
            self.egress.addr,
            self.routes.clone(),
            svid(&self.alpha, ALPHA_EGRESS),
            self.both.clone(),
            self.transport,
        );
        self.egress = rebind(transport, || {
            relay::start_egress(
                addr,
                routes.clone(),
                svid.clone(),
                both.clone(),
                egress_opts(transport),
            )
        })
        .await;
    }
}

/// Starts a gateway again at its old address, retrying while the old sockets close.
async fn rebind<F, Fut>(transport: Transport, start: F) -> Gateway
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Gateway, relay::GatewayError>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match start().await {
            Ok(g) => return g,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{transport}: rebinding: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn egress_opts(transport: Transport) -> EgressOptions {
    EgressOptions {
        transport,
        probe_interval: Some(Duration::from_millis(100)),
        ..EgressOptions::default()
    }
}

const TRANSPORTS: [Transport; 2] = [Transport::Tcp, Transport::Quic];

async fn world(
    transport: Transport,
    extra_exports: BTreeMap<Hostname, Vec<SocketAddr>>,
    gamma: Option<IngressPeer>,
) -> World {
    world_with(transport, Duration::ZERO, extra_exports, gamma).await
}

/// [`world`] with an echo that takes `latency` to answer.
async fn world_with(
    transport: Transport,
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
    let ingress_peers = Arc::new(RwLock::new(Arc::new(peers)));
    let reset_key = meshfed_gateway::tunnel::new_reset_key().unwrap();
    let ingress = relay::start_ingress(
        any(),
        ingress_peers.clone(),
        svid(&beta, BETA_INGRESS),
        both.clone(),
        IngressOptions {
            quic: true,
            reset_key: Some(reset_key),
            ..IngressOptions::default()
        },
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
                    ingress_id: PeerIdentity::Id(BETA_INGRESS.parse().unwrap()),
                },
            )
        })
        .collect();
    let routes = Arc::new(RwLock::new(Arc::new(routes)));
    let egress = relay::start_egress(
        any(),
        routes.clone(),
        svid(&alpha, ALPHA_EGRESS),
        both.clone(),
        egress_opts(transport),
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
            priority: 0,
            healthy: true,
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
        both.clone(),
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
        both,
        ingress_peers,
        routes,
        reset_key,
        transport,
        _echo: echo,
    }
}

async fn get(addr: SocketAddr, host: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /who HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return (0, format!("read: {e}")),
        Err(_) => return (0, "timed out".into()),
    }
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
    for transport in TRANSPORTS {
        identity_end_to_end(transport).await;
    }
}

async fn identity_end_to_end(transport: Transport) {
    let w = world(transport, BTreeMap::new(), None).await;
    assert_eq!(w.egress.transport(), Some(transport));
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
        w.ingress.stats.upstream_connections.get(),
        tapped.len() as u64
    );
    // Per-peer counts on both sides: streams (the client sidecar reuses its connection) and
    // bytes each way.
    let (e, i) = (w.egress.stats.to_json(), w.ingress.stats.to_json());
    assert!(e["peers"]["beta"]["streams"].as_u64().unwrap() >= 1, "{e}");
    assert!(i["peers"]["alpha"]["streams"].as_u64().unwrap() >= 1, "{i}");
    for (j, peer) in [(&e, "beta"), (&i, "alpha")] {
        for dir in ["bytesToPeer", "bytesFromPeer"] {
            assert!(
                j["peers"][peer][dir].as_u64().unwrap() > 1000,
                "{transport} {dir}: {j}"
            );
        }
    }
    let _ = (&w.alpha, &w.beta, &w.server, &w.egress);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_not_exported_to_the_caller_never_reach_an_endpoint() {
    for transport in TRANSPORTS {
        not_exported_refused(transport).await;
    }
}

async fn not_exported_refused(transport: Transport) {
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
    let w = world(transport, BTreeMap::new(), Some(gamma)).await;
    let out = w.client.outbound.unwrap();
    let before = w.ingress.stats.upstream_connections.get();
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
    assert_eq!(w.ingress.stats.upstream_connections.get(), before);
    // Legitimate traffic is unaffected.
    let (status, body) = get(out, LOCAL_NAME).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_refuses_wrong_tunnels_and_bad_client_hellos() {
    let w = world(Transport::Tcp, BTreeMap::new(), None).await;
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
    // A ClientHello that claims more than 16 KiB of handshake.
    let mut huge = vec![22, 3, 1, 0x40, 0x00, 1, 0x00, 0x80, 0x00];
    huge.resize(17 * 1024, 0);
    tunnel(egress_id(), huge.clone()).await;
    // The same at alpha's egress, from a local client.
    let mut plain = tokio::net::TcpStream::connect(w.egress.addr).await.unwrap();
    let _ = plain.write_all(&huge).await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut sink)).await;
    assert_eq!(w.egress.stats.denied("ClientHelloTooLarge"), 1);
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
        || s.denied("ClientHelloTooLarge") < 1
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            s.denials.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.upstream_connections.get(), 0);
    // The client path still works.
    let (status, body) = get(w.client.outbound.unwrap(), LOCAL_NAME).await;
    assert_eq!(status, 200, "{body}");
}

/// From the security review: a refused QUIC tunnel's close frame named the client identity
/// the ingress expects (over TCP the refusal is only the `certificate_unknown` alert). It now
/// says nothing of who is expected or why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_quic_tunnel_learns_no_more_than_a_tcp_one() {
    let w = world(Transport::Quic, BTreeMap::new(), None).await;
    let provider = verify::provider();
    let verifier = meshfed_trust::SpiffeServerVerifier::new(
        bundles(&[&w.alpha, &w.beta]),
        Expect::id(BETA_INGRESS.parse::<SpiffeId>().unwrap()),
        provider.clone(),
    );
    // A workload of alpha, not alpha's egress gateway.
    let mut tls = verify::client_config(svid(&w.alpha, UI), Arc::new(verifier), provider).unwrap();
    tls.alpn_protocols = vec![meshfed_gateway::tunnel::ALPN_TUNNEL.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let connecting = endpoint
        .connect_with(
            quinn::ClientConfig::new(Arc::new(crypto)),
            w.ingress.addr,
            "ingress.meshfed.invalid",
        )
        .unwrap();
    // The client's side of the handshake may finish before the ingress checks its
    // certificate; either way the connection ends refused.
    let refused = match tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .expect("an answer from the ingress")
    {
        Ok(conn) => tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .expect("the refused connection closes"),
        Err(e) => e,
    };
    let said = refused.to_string();
    for secret in ["egress", "alpha-system", "not an allowed", "expected"] {
        assert!(!said.contains(secret), "the close frame says {said:?}");
    }
    assert!(said.contains("certificate"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_ingress_refuses_new_connections_and_lets_streams_in_flight_finish() {
    for transport in TRANSPORTS {
        drain_in_flight(transport).await;
    }
}

async fn drain_in_flight(transport: Transport) {
    let w = world_with(
        transport,
        Duration::from_millis(1500),
        BTreeMap::new(),
        None,
    )
    .await;
    let out = w.client.outbound.unwrap();
    let in_flight = tokio::spawn(get(out, LOCAL_NAME));
    let stats = w.ingress.stats.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // (The stream, not a connection: the egress's probes connect too.)
    let alpha = stats.peer("alpha");
    while alpha.active.get() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{transport}: the request never reached the ingress"
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
    assert_eq!(status, 200, "{transport}: {body}");
    assert!(body.contains(&format!("\"caller\":\"{UI}\"")), "{body}");
    // What is left open after the deadline is at most the idle pooled tunnel of that request.
    assert!(drain.await.unwrap() <= 1);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Ingress,
    Egress,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn either_gateway_restarts_under_load_and_new_requests_succeed() {
    for transport in TRANSPORTS {
        for which in [Which::Ingress, Which::Egress] {
            restart_under_load(transport, which).await;
        }
    }
}

/// Three callers loop through the client sidecar; one gateway is stopped (its connections
/// cut) for 300 ms and started again at the same address. Requests fail only around the
/// outage; everything started a moment after the restart succeeds.
async fn restart_under_load(transport: Transport, which: Which) {
    let mut w = world(transport, BTreeMap::new(), None).await;
    let out = w.client.outbound.unwrap();
    // (started, finished, status) of every request.
    type Log = Vec<(tokio::time::Instant, tokio::time::Instant, u16)>;
    let log: Arc<Mutex<Log>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let (log, stop) = (log.clone(), stop.clone());
            tokio::spawn(async move {
                // Bounded: at most 2,000 requests per caller.
                for _ in 0..2000 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let started = tokio::time::Instant::now();
                    let (status, _) = get(out, LOCAL_NAME).await;
                    let finished = tokio::time::Instant::now();
                    log.lock().unwrap().push((started, finished, status));
                }
            })
        })
        .collect();
    let ok_since = |t: tokio::time::Instant| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|(s, _, c)| *s >= t && *c == 200)
            .count()
    };
    let t0 = tokio::time::Instant::now();
    let deadline = t0 + Duration::from_secs(30);
    while ok_since(t0) < 15 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{transport}: no load"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let outage = tokio::time::Instant::now();
    match which {
        Which::Ingress => w.ingress.stop(),
        Which::Egress => w.egress.stop(),
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    match which {
        Which::Ingress => w.restart_ingress().await,
        Which::Egress => w.restart_egress().await,
    }
    let back = tokio::time::Instant::now();
    while ok_since(back) < 30 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{transport} {which:?}: not back: {:?}",
            log.lock()
                .unwrap()
                .iter()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in callers {
        c.await.unwrap();
    }
    let log = log.lock().unwrap();
    let settled = back + Duration::from_secs(1);
    let late_failures: Vec<_> = log
        .iter()
        .filter(|(s, _, c)| *s >= settled && *c != 200)
        .collect();
    assert!(
        late_failures.is_empty(),
        "{transport} {which:?}: failures after the restart: {late_failures:?}"
    );
    // Requests in flight on the stopped gateway may fail; none that ended before it did.
    let early_failures = log
        .iter()
        .filter(|(_, f, c)| *f < outage && *c != 200)
        .count();
    assert_eq!(
        early_failures, 0,
        "{transport} {which:?}: failures before the outage"
    );
    let _ = (&w.server, &w.client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_egress_probes_the_peer_ingress_and_reports_reachability_and_rtt() {
    for transport in TRANSPORTS {
        let mut w = world(transport, BTreeMap::new(), None).await;
        let beta = w.egress.stats.peer("beta");
        let wait = |want: bool| {
            let beta = beta.clone();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
                while beta.reachable() != Some(want) {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{transport}: reachable never became {want}: {:?}",
                        beta.probe()
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        wait(true).await;
        let rtt = beta.probe().unwrap().rtt.unwrap();
        assert!(
            rtt > Duration::ZERO && rtt < Duration::from_secs(1),
            "{rtt:?}"
        );
        let metrics = w.egress.stats.metrics().encode();
        assert!(
            metrics.contains("meshfed_gateway_peer_reachable{peer=\"beta\"} 1"),
            "{metrics}"
        );
        assert!(metrics.contains("meshfed_gateway_tunnel_rtt_seconds{peer=\"beta\"}"));
        // Probes carry nothing and are not refusals at the ingress.
        assert!(w.ingress.stats.denials.lock().unwrap().is_empty());
        w.ingress.stop();
        wait(false).await;
        assert!(beta.probe().unwrap().error.is_some());
        w.restart_ingress().await;
        wait(true).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_discovery_port_forwards_tls_to_the_peering_service_and_nothing_else() {
    let alpha =
        CertificateAuthority::new("alpha.local".parse().unwrap(), SystemTime::now()).unwrap();
    let beta = CertificateAuthority::new("beta.local".parse().unwrap(), SystemTime::now()).unwrap();
    let both = bundles(&[&alpha, &beta]);
    let provider = verify::provider();
    const PEERING: &str = "spiffe://beta.local/ns/beta-system/sa/meshfed-peering";
    const PEER: &str = "spiffe://alpha.local/ns/alpha-system/sa/meshfed-peering";
    // Beta's "peering service": an mTLS echo that accepts only alpha's peering identity.
    let server_tls = verify::server_config(
        svid(&beta, PEERING),
        Arc::new(meshfed_trust::SpiffeClientVerifier::new(
            both.clone(),
            Expect::id(PEER.parse::<SpiffeId>().unwrap()),
            provider.clone(),
        )),
        provider.clone(),
    )
    .unwrap();
    let l = tokio::net::TcpListener::bind(any()).await.unwrap();
    let upstream = l.local_addr().unwrap();
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_tls));
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let who = s
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| meshfed_trust::svid::spiffe_id_of(c).ok())
                    .map(|id| id.to_string())
                    .unwrap_or_default();
                let _ = s.write_all(who.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    let g = relay::start_discovery(
        any(),
        upstream,
        &meshfed_gateway::stats::GatewayMetrics::new(),
    )
    .await
    .unwrap();
    // Through the discovery port, the peering mTLS is end to end: the server sees alpha's
    // peering identity, the client verified beta's.
    let client_tls = verify::client_config(
        svid(&alpha, PEER),
        Arc::new(meshfed_trust::SpiffeServerVerifier::new(
            both,
            Expect::id(PEERING.parse::<SpiffeId>().unwrap()),
            provider,
        )),
        verify::provider(),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(client_tls))
        .connect(
            rustls_pki_types::ServerName::try_from("peering").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, PEER);
    // Plain HTTP never reaches the peering service.
    let mut plain = tokio::net::TcpStream::connect(g.addr).await.unwrap();
    plain
        .write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut sink)).await;
    assert!(sink.is_empty());
    assert_eq!(g.stats.denied("NotTls"), 1);
    assert_eq!(g.stats.upstream_connections.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_skips_an_endpoint_that_refuses() {
    let w = world(Transport::Tcp, BTreeMap::new(), None).await;
    // A dead endpoint first in the exported service's list.
    let dead = {
        let l = std::net::TcpListener::bind(any()).unwrap();
        l.local_addr().unwrap()
    };
    {
        let mut peers = w.ingress_peers.write().unwrap();
        let mut list = (**peers).clone();
        let eps = list[0].exports.get_mut(&EXPORTED.parse().unwrap()).unwrap();
        eps.insert(0, dead);
        *peers = Arc::new(list);
    }
    let out = w.client.outbound.unwrap();
    let calls: Vec<_> = (0..4).map(|_| tokio::spawn(get(out, LOCAL_NAME))).collect();
    for c in calls {
        let (status, body) = c.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(w.ingress.stats.denied("EndpointUnreachable"), 0);
}
