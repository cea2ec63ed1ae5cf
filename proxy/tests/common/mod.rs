//! Helpers shared by the proxy's integration tests: a CA, echo apps behind server sidecars,
//! client sidecars, and raw HTTP/1.1 requests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test file uses some

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshfed_core::authz::Policy;
use meshfed_core::traffic::TrafficPolicy;
use meshfed_proxy::echo::{self, EchoConfig};
use meshfed_proxy::sidecar::{
    self, Endpoint, HttpVersion, OutboundService, Running, SidecarConfig,
};
use meshfed_trust::CertificateAuthority;
use meshfed_trust::bundle::TrustBundleSet;
use meshfed_trust::verify::{self, Expect, SharedBundles, SvidResolver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const UI: &str = "spiffe://alpha.local/ns/web/sa/ui";
pub const ECHO: &str = "spiffe://alpha.local/ns/shop/sa/echo";
pub const HOST: &str = "echo.shop.svc.cluster.local";

/// A new CA for `alpha.local`, the trust domain of every identity above.
pub fn alpha_ca() -> CertificateAuthority {
    CertificateAuthority::new("alpha.local".parse().unwrap(), SystemTime::now()).unwrap()
}

pub fn bundles(ca: &CertificateAuthority) -> SharedBundles {
    let mut s = TrustBundleSet::new();
    s.insert(ca.bundle(1).unwrap()).unwrap();
    verify::shared(s)
}

pub fn resolver(ca: &CertificateAuthority, id: &str) -> Arc<SvidResolver> {
    let svid = ca
        .issue(
            &id.parse().unwrap(),
            Duration::from_secs(3600),
            SystemTime::now(),
        )
        .unwrap();
    Arc::new(SvidResolver::new(&svid, verify::provider()).unwrap())
}

pub fn any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// An echo app behind a server sidecar; returns the sidecar (inbound address) and the echo task.
pub async fn server(
    ca: &CertificateAuthority,
    instance: &str,
    allow: Expect,
) -> (Running, tokio::task::JoinHandle<()>) {
    guarded(ca, instance, allow, vec![]).await
}

/// [`server`] with authorization policies.
/// A server sidecar that lets in any caller from the CA's own trust domain.
pub async fn domain_server(
    ca: &CertificateAuthority,
    instance: &str,
) -> (Running, tokio::task::JoinHandle<()>) {
    server(ca, instance, Expect::domain(ca.trust_domain().clone())).await
}

pub async fn guarded(
    ca: &CertificateAuthority,
    instance: &str,
    allow: Expect,
    policies: Vec<Policy>,
) -> (Running, tokio::task::JoinHandle<()>) {
    echo_server(ca, echo_config(instance), allow, policies).await
}

/// The echo config of one test instance.
pub fn echo_config(instance: &str) -> EchoConfig {
    EchoConfig {
        mesh: "alpha".into(),
        service: "echo".into(),
        instance: instance.into(),
        ..EchoConfig::default()
    }
}

/// A server sidecar's configuration: inbound only, in front of `app` (shop/echo).
pub fn server_config(app: SocketAddr) -> SidecarConfig {
    SidecarConfig {
        outbound: None,
        inbound: Some(any()),
        app: Some(app),
        app_protocol: HttpVersion::Http1,
        allow: Expect::AnyKnownDomain,
        services: vec![],
        policies: vec![],
        service: "shop/echo".into(),
        admin: None,
        tcp: vec![],
        tcp_ports: vec![],
        names: vec![],
        idle_timeout: meshfed_proxy::idle::IDLE_TIMEOUT,
    }
}

/// An echo app configured by `echo` behind a server sidecar running as [`ECHO`].
pub async fn echo_server(
    ca: &CertificateAuthority,
    echo: EchoConfig,
    allow: Expect,
    policies: Vec<Policy>,
) -> (Running, tokio::task::JoinHandle<()>) {
    let (app, task) = echo::start(any(), echo).await.unwrap();
    let cfg = SidecarConfig {
        allow,
        policies,
        admin: Some(any()),
        ..server_config(app)
    };
    (
        sidecar::start(cfg, resolver(ca, ECHO), bundles(ca))
            .await
            .unwrap(),
        task,
    )
}

/// A client sidecar running as `id` with one route to [`HOST`].
pub async fn client(ca: &CertificateAuthority, id: &str, endpoints: Vec<Endpoint>) -> Running {
    client_with(ca, id, endpoints, TrafficPolicy::default()).await
}

/// [`client`] with a traffic policy for the route.
pub async fn client_with(
    ca: &CertificateAuthority,
    id: &str,
    endpoints: Vec<Endpoint>,
    traffic: TrafficPolicy,
) -> Running {
    client_sidecar(resolver(ca, id), bundles(ca), endpoints, traffic).await
}

/// The endpoint a server sidecar from [`echo_server`] offers.
pub fn endpoint_of(srv: &Running) -> Endpoint {
    Endpoint {
        addr: srv.inbound.unwrap(),
        identity: ECHO.parse().unwrap(),
        labels: Default::default(),
        sni: None,
        priority: 0,
        healthy: true,
    }
}

/// A client sidecar's configuration: outbound only, one route to [`HOST`].
pub fn client_config(endpoints: Vec<Endpoint>, traffic: TrafficPolicy) -> SidecarConfig {
    SidecarConfig {
        outbound: Some(any()),
        inbound: None,
        app: None,
        app_protocol: HttpVersion::Http1,
        allow: Expect::AnyKnownDomain,
        services: vec![OutboundService {
            host: HOST.parse().unwrap(),
            traffic,
            endpoints,
            protocol: HttpVersion::Http1,
        }],
        policies: vec![],
        service: "web/ui".into(),
        admin: None,
        tcp: vec![],
        tcp_ports: vec![],
        names: vec![],
        idle_timeout: meshfed_proxy::idle::IDLE_TIMEOUT,
    }
}

/// A client sidecar with its own SVID and bundles.
pub async fn client_sidecar(
    svid: Arc<SvidResolver>,
    bundles: SharedBundles,
    endpoints: Vec<Endpoint>,
    traffic: TrafficPolicy,
) -> Running {
    let cfg = client_config(endpoints, traffic);
    sidecar::start(cfg, svid, bundles).await.unwrap()
}

/// Sends a raw HTTP/1.1 request for `/hello?x=1`; returns status and body.
pub async fn get(addr: SocketAddr, host: &str, extra: &str) -> (u16, String) {
    request(addr, "GET", "/hello?x=1", host, extra).await
}

/// POSTs `body` with a Content-Length; returns status and body.
pub async fn post(addr: SocketAddr, body: &[u8]) -> (u16, String) {
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    exchange(addr, &raw).await
}

/// Sends a raw HTTP/1.1 request; returns status and body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    host: &str,
    extra: &str,
) -> (u16, String) {
    let req =
        format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
    exchange(addr, req.as_bytes()).await
}

/// Writes `raw` on a new connection and reads the response to its end.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
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

pub fn body_json(body: &str) -> serde_json::Value {
    // Tolerate chunked framing: take the JSON object inside.
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map_or(body.len(), |e| e + 1);
    serde_json::from_str(&body[start..end]).unwrap_or(serde_json::Value::Null)
}

/// The value of the metric line starting with `prefix` (0 when absent).
pub fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
