//! The sidecar's two listeners.
//!
//! Outbound (plaintext from the local app): the `Host` header names the service; an endpoint is
//! chosen round robin; the request goes over mTLS with our SVID to the endpoint's inbound
//! listener, and the server must present one of the service's identities.
//!
//! Inbound (mTLS from other sidecars): the caller's SVID is verified against the bundle of its
//! own trust domain and the allowed identities (from a mesh: its own domain and the peers the
//! service is exported to); a refused handshake is counted by reason; the request reaches the local app with every
//! client-sent copy of the identity header removed and the verified SPIFFE ID added. Before
//! that, the path is normalized and the workload's authorization policies decide; the app gets
//! exactly the path that was checked.
//!
//! This module holds the configuration, the listeners and the running handle; `routes` the
//! outbound routes (balancing, priority failover, ejection, probes), `outbound` the request
//! path to an endpoint (attempts, retries, connections), `inbound` the path to the app.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::time::Instant;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use meshfed_core::authz::{self, Decision, Policy};
use meshfed_core::routing::Target;
use meshfed_core::traffic::{self, OutlierDetection, RetryOn, Share, TrafficPolicy};
use meshfed_core::{Hostname, SpiffeId};
use meshfed_trust::verify::{
    self, Expect, SharedBundles, SpiffeClientVerifier, SpiffeServerVerifier, SvidResolver,
};
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};

use crate::CLIENT_ID_HEADER;
use crate::http::{Body, boxed, strip_hop_by_hop, text};
pub use crate::metrics::Stats;
use crate::metrics::{Direction, ServiceMetrics};
use crate::outlier::{Outliers, Verdict};
pub use crate::pool::Version as HttpVersion;
use crate::pool::{self, Pool, SendError};
use crate::tcp;
pub use crate::tcp::TcpForward;

mod inbound;
mod outbound;
mod routes;

use inbound::*;
use outbound::*;
use routes::*;

/// Longest time a client may take to send a request's headers (slow-header attacks), and the
/// longest an idle HTTP/1.1 client connection is kept waiting for its next request.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest time to connect and handshake with an upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One endpoint of a service: where its inbound listener is, and who must answer there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub identity: SpiffeId,
    /// The workload's labels (traffic subsets select by them).
    pub labels: BTreeMap<String, String>,
    /// The server name to send: a peer's exported name when `addr` is an egress gateway
    /// that routes by it; `None` for a local endpoint.
    pub sni: Option<Hostname>,
    /// Locality priority, 0 first: traffic goes to the best priority while enough of it is
    /// healthy, and spills to the next as it degrades (Envoy's overprovisioning factor 1.4).
    pub priority: u8,
    /// False when the configuration says it serves nothing now (a peer that reports no
    /// healthy endpoints behind it): chosen only when nothing else is left.
    pub healthy: bool,
}

/// A service the local app may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundService {
    /// Canonical hostname, e.g. `echo.shop.svc.cluster.local`.
    pub host: Hostname,
    pub endpoints: Vec<Endpoint>,
    /// Timeouts, retries and fault injection for calls to it.
    pub traffic: TrafficPolicy,
    /// HTTP/2 for services whose ports are HTTP2 or GRPC (gRPC needs it end to end).
    pub protocol: HttpVersion,
}

/// A sidecar's static configuration (the control-plane stream comes later).
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// Where the local app sends its requests (plaintext, loopback).
    pub outbound: Option<SocketAddr>,
    /// Where other sidecars reach this workload (mTLS).
    pub inbound: Option<SocketAddr>,
    /// The local app behind the inbound listener.
    pub app: Option<SocketAddr>,
    /// What the app speaks: HTTP/2 (prior knowledge, h2c) for an HTTP2 or GRPC service.
    pub app_protocol: HttpVersion,
    /// Who may call this workload.
    pub allow: Expect,
    pub services: Vec<OutboundService>,
    /// Authorization policies for requests reaching this workload (see [`authz`]).
    pub policies: Vec<Policy>,
    /// This workload's service, e.g. `shop/echo` (a metric label for inbound requests).
    pub service: String,
    /// The admin listener: `/healthz/live`, `/healthz/ready`, `/metrics` (plaintext).
    pub admin: Option<SocketAddr>,
    /// Local listeners for TCP service ports the app calls.
    pub tcp: Vec<TcpForward>,
    /// This workload's TCP ports: streams for them reach the app's IP on that port.
    pub tcp_ports: Vec<u16>,
    /// The server names (SNI) the inbound listener answers to: the service's hostname and the
    /// names it is exported under. A ClientHello naming anything else is refused; one without
    /// a name is accepted. Empty: any name.
    pub names: Vec<Hostname>,
    /// How long an HTTP connection on either listener may stay silent — a caller stalled in
    /// the middle of a body, an HTTP/2 connection nobody uses — before it is closed
    /// ([`crate::idle::IDLE_TIMEOUT`] by default). TCP forwards are not cut.
    pub idle_timeout: Duration,
}

/// Addresses the running sidecar listens on.
#[derive(Debug)]
pub struct Running {
    pub outbound: Option<SocketAddr>,
    pub inbound: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    /// The TCP forwards' listeners, in configuration order.
    pub tcp: Vec<SocketAddr>,
    /// The sidecar's counters, as `/metrics` shows them.
    pub stats: Arc<Stats>,
    listeners: Listeners,
    /// The server names the inbound listener answers to.
    names: Shared<Vec<Hostname>>,
    routes: Shared<Vec<Arc<Route>>>,
    tcp_routes: tcp::Routes,
    policies: Shared<[Policy]>,
    svid: Arc<SvidResolver>,
    bundles: SharedBundles,
    /// Who may call this workload (`allow`), swapped on update.
    inbound_verifier: Option<Arc<SpiffeClientVerifier>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Applies a new configuration: routes, endpoints, traffic and authorization policies,
    /// and who may call (`allow`, from the next handshake on).
    /// Requests in flight finish with the configuration they began with; listener addresses
    /// cannot change (restart for that). On error nothing changes.
    pub fn update(&self, cfg: &SidecarConfig) -> Result<(), SidecarError> {
        if Listeners::of(cfg) != self.listeners {
            return Err(SidecarError::ListenerChange);
        }
        let old = current(&self.routes);
        let routes = Arc::new(build_routes(
            cfg,
            &self.svid,
            &self.bundles,
            &old,
            &self.stats,
        )?);
        let tcp_routes = Arc::new(build_tcp(cfg, &self.svid, &self.bundles)?);
        *self
            .tcp_routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = tcp_routes;
        let policies: Arc<[Policy]> = cfg.policies.clone().into();
        *self
            .routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = routes;
        *self
            .policies
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = policies;
        if let Some(v) = &self.inbound_verifier {
            v.set_expect(cfg.allow.clone());
        }
        *self
            .names
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(cfg.names.clone());
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the inbound listener needs the app's address")]
    NoApp,
    #[error("listener or app addresses changed; restart the sidecar to move them")]
    ListenerChange,
}

/// What an update cannot change: listener addresses, the app, and the inbound TCP ports
/// (their ALPN names are in the TLS server configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listeners {
    outbound: Option<SocketAddr>,
    inbound: Option<SocketAddr>,
    app: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    tcp: Vec<SocketAddr>,
    tcp_ports: Vec<u16>,
}

impl Listeners {
    fn of(cfg: &SidecarConfig) -> Self {
        Self {
            outbound: cfg.outbound,
            inbound: cfg.inbound,
            app: cfg.app,
            admin: cfg.admin,
            tcp: cfg.tcp.iter().map(|t| t.listen).collect(),
            tcp_ports: cfg.tcp_ports.clone(),
        }
    }
}

fn build_tcp(
    cfg: &SidecarConfig,
    svid: &Arc<SvidResolver>,
    bundles: &SharedBundles,
) -> Result<Vec<Arc<tcp::TcpRoute>>, SidecarError> {
    cfg.tcp
        .iter()
        .map(|f| Ok(Arc::new(tcp::TcpRoute::new(f, svid, bundles)?)))
        .collect()
}

/// A value the running sidecar swaps on update; requests in flight keep the one they began
/// with.
type Shared<T> = Arc<RwLock<Arc<T>>>;

fn current<T: ?Sized>(s: &RwLock<Arc<T>>) -> Arc<T> {
    s.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// A TLS client for a service's endpoints: presents our SVID, accepts only the endpoints'
/// identities, offers `alpn`.
pub(crate) fn upstream_tls(
    svid: &Arc<SvidResolver>,
    bundles: &SharedBundles,
    endpoints: &[Endpoint],
    alpn: Vec<u8>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = verify::provider();
    let ids: BTreeSet<SpiffeId> = endpoints.iter().map(|e| e.identity.clone()).collect();
    let mut tls = verify::client_config(
        svid.clone(),
        Arc::new(SpiffeServerVerifier::new(
            bundles.clone(),
            Expect::Ids(ids),
            provider.clone(),
        )),
        provider,
    )?;
    tls.alpn_protocols = vec![alpn];
    Ok(tls)
}

/// Starts the configured listeners.
pub async fn start(
    cfg: SidecarConfig,
    svid: Arc<SvidResolver>,
    bundles: SharedBundles,
) -> Result<Running, SidecarError> {
    let provider = verify::provider();
    // Everything that can fail comes before any task starts: a refused configuration leaves
    // no port bound (its listeners close as they drop), so the next attempt binds the same
    // ports. (Aborting started accept loops would free their ports only later.)
    if cfg.inbound.is_some() && cfg.app.is_none() {
        return Err(SidecarError::NoApp);
    }
    let mut tcp_listeners = Vec::new();
    for f in &cfg.tcp {
        tcp_listeners.push(bind(f.listen).await?);
    }
    let mut out_listener = match cfg.outbound {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let mut in_listener = match cfg.inbound {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let mut admin_listener = match cfg.admin {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let mut tasks = Started::default();
    let mut out_addr = None;
    let mut in_addr = None;
    let mut inbound_verifier = None;
    let stats = Arc::new(Stats::new());
    let routes: Shared<Vec<Arc<Route>>> = Arc::new(RwLock::new(Arc::new(build_routes(
        &cfg,
        &svid,
        &bundles,
        &[],
        &stats,
    )?)));
    let policies: Shared<[Policy]> = Arc::new(RwLock::new(cfg.policies.clone().into()));
    let names: Shared<Vec<Hostname>> = Arc::new(RwLock::new(Arc::new(cfg.names.clone())));
    let tcp_routes: tcp::Routes =
        Arc::new(RwLock::new(Arc::new(build_tcp(&cfg, &svid, &bundles)?)));
    let mut tcp_addrs = Vec::new();
    for (f, (listener, bound)) in cfg.tcp.iter().zip(tcp_listeners) {
        tcp_addrs.push(bound);
        tasks.push(tcp::serve_outbound(
            listener,
            f.listen,
            tcp_routes.clone(),
            stats.clone(),
        ));
    }
    if let Some((listener, bound)) = out_listener.take() {
        out_addr = Some(bound);
        tasks.push(serve_plain(
            listener,
            cfg.idle_timeout,
            (routes.clone(), stats.clone()),
            |(routes, stats), req| outbound(routes, stats, req),
        ));
    }
    if let Some((listener, bound)) = in_listener.take() {
        let app = cfg.app.ok_or(SidecarError::NoApp)?;
        let verifier = Arc::new(SpiffeClientVerifier::new(
            bundles.clone(),
            cfg.allow.clone(),
            provider.clone(),
        ));
        inbound_verifier = Some(verifier.clone());
        let mut server = verify::server_config(svid.clone(), verifier, provider.clone())?;
        server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
        server
            .alpn_protocols
            .extend(cfg.tcp_ports.iter().map(|p| tcp::alpn(*p)));
        let server = Arc::new(server);
        let app_protocol = cfg.app_protocol;
        let names = names.clone();
        let metrics = Arc::new(stats.service(Direction::Inbound, &cfg.service));
        let policies = policies.clone();
        let app_pool = Arc::new(Pool::default());
        let idle = cfg.idle_timeout;
        let stats = stats.clone();
        in_addr = Some(bound);
        tasks.push(crate::accept::accept_each(listener, move |tcp, _| {
            let (server, names) = (server.clone(), names.clone());
            let inb = Inbound {
                app,
                app_protocol,
                app_pool: app_pool.clone(),
                metrics: metrics.clone(),
                policies: policies.clone(),
                stats: stats.clone(),
            };
            async move {
                let handshake = async {
                    let start = tokio_rustls::LazyConfigAcceptor::new(
                        rustls::server::Acceptor::default(),
                        tcp,
                    )
                    .await
                    .map_err(|_| "BadClientHello")?;
                    if let Some(name) = start.client_hello().server_name() {
                        let served = current(&names);
                        let ok = served.is_empty()
                            || Hostname::canonicalize(name).is_ok_and(|n| served.contains(&n));
                        if !ok {
                            return Err("UnknownServerName");
                        }
                    }
                    start
                        .into_stream(server)
                        .await
                        .map_err(|e| refusal_reason(&e))
                };
                let refuse = |reason| {
                    inb.stats.handshake(Direction::Inbound, false);
                    inb.stats.refused(reason);
                };
                let tls = match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(reason)) => return refuse(reason),
                    Err(_) => return refuse("HandshakeTimeout"),
                };
                inb.stats.handshake(Direction::Inbound, true);
                let caller = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| meshfed_trust::svid::spiffe_id_of(c).ok());
                let Some(caller) = caller else { return };
                let alpn = tls.get_ref().1.alpn_protocol();
                if let Some(port) = alpn.and_then(tcp::port_of) {
                    let policies = current(&inb.policies);
                    tcp::inbound(tls, &caller, port, inb.app.ip(), &policies, &inb.stats).await;
                    return;
                }
                let h2 = alpn == Some(ALPN_H2);
                let header = HeaderValue::from_str(&caller.to_string()).ok();
                let inb = Arc::new((inb, Caller { id: caller, header }));
                let svc = service_fn(move |req| inbound(inb.clone(), req));
                let (io, moved) = crate::idle::Counted::new(tls);
                let io = TokioIo::new(io);
                if h2 {
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc);
                    crate::idle::until_silent(conn, &moved, idle).await;
                } else {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .serve_connection(io, svc);
                    crate::idle::until_silent(conn, &moved, idle).await;
                }
            }
        }));
    }
    let mut admin_addr = None;
    if let Some((listener, bound)) = admin_listener.take() {
        admin_addr = Some(bound);
        tasks.push(crate::admin::spawn(
            listener,
            sidecar_admin(&stats, cfg.app),
        ));
    }
    Ok(Running {
        outbound: out_addr,
        inbound: in_addr,
        admin: admin_addr,
        tcp: tcp_addrs,
        stats,
        listeners: Listeners::of(&cfg),
        names,
        routes,
        tcp_routes,
        policies,
        svid,
        bundles,
        inbound_verifier,
        tasks: std::mem::take(&mut tasks.0),
    })
}

/// The tasks [`start`] has spawned, aborted when dropped before it succeeds.
#[derive(Default)]
struct Started(Vec<tokio::task::JoinHandle<()>>);

impl Started {
    fn push(&mut self, t: tokio::task::JoinHandle<()>) {
        self.0.push(t);
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), SidecarError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| SidecarError::Bind(addr, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| SidecarError::Bind(addr, e))?;
    Ok((listener, bound))
}

/// Why an inbound handshake failed: the verifier's reason for a refused certificate (a caller
/// of a trust domain the service is not exported to is `IdentityNotAllowed`), else a generic one.
fn refusal_reason(e: &std::io::Error) -> &'static str {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map_or("HandshakeFailed", |tls| {
            meshfed_trust::verify::VerifyError::from_rustls(tls).map_or(
                match tls {
                    rustls::Error::NoCertificatesPresented => "NoCertificate",
                    _ => "HandshakeFailed",
                },
                meshfed_trust::verify::VerifyError::reason,
            )
        })
}

/// Serves plaintext HTTP/1.1 and HTTP/2 (prior knowledge, as gRPC clients speak it) on
/// `listener`, each request handled by `handler` with a clone of `state`.
fn serve_plain<S, F, Fut>(
    listener: TcpListener,
    idle: Duration,
    state: S,
    handler: F,
) -> tokio::task::JoinHandle<()>
where
    S: Clone + Send + Sync + 'static,
    F: Fn(S, Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    crate::accept::accept_each(listener, move |tcp, _| {
        let state = state.clone();
        async move {
            let svc = service_fn(move |req| handler(state.clone(), req));
            let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            b.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let (io, moved) = crate::idle::Counted::new(tcp);
            let conn = b.serve_connection(TokioIo::new(io), svc);
            crate::idle::until_silent(conn, &moved, idle).await;
        }
    })
}

/// The admin port: liveness (the sidecar answers), readiness (the app behind the inbound
/// listener accepts connections) and Prometheus metrics.
fn sidecar_admin(stats: &Arc<Stats>, app: Option<SocketAddr>) -> crate::admin::Admin {
    let stats = stats.clone();
    let mut admin = crate::admin::Admin::default();
    admin.pages.insert(
        "/metrics",
        crate::admin::Page::metrics(move || stats.encode()),
    );
    admin.ready = app.map(|app| -> crate::admin::ReadyCheck {
        Arc::new(move || {
            Box::pin(async move {
                let not_ready = |detail: String| crate::admin::NotReady {
                    reason: "AppUnavailable",
                    detail,
                };
                match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(app)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(not_ready(format!("{app}: {e}"))),
                    Err(_) => Err(not_ready(format!("{app}: no answer within 1s"))),
                }
            })
        })
    });
    admin
}
