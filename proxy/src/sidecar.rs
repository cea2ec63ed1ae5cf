//! The sidecar's two listeners.
//!
//! Outbound (plaintext from the local app): the `Host` header names the service; an endpoint is
//! chosen round robin; the request goes over mTLS with our SVID to the endpoint's inbound
//! listener, and the server must present one of the service's identities.
//!
//! Inbound (mTLS from other sidecars): the caller's SVID is verified against the bundle of its
//! own trust domain and the allowed identities; the request reaches the local app with every
//! client-sent copy of the identity header removed and the verified SPIFFE ID added. Before
//! that, the path is normalized and the workload's authorization policies decide; the app gets
//! exactly the path that was checked.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

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
}

#[derive(Debug)]
struct Route {
    host: Hostname,
    /// Requests and latency, labelled with `host`.
    metrics: ServiceMetrics,
    endpoints: Vec<Endpoint>,
    next: AtomicUsize,
    tls: Arc<rustls::ClientConfig>,
    traffic: TrafficPolicy,
    protocol: HttpVersion,
    /// Requests in flight, and those of them retrying (the retry budget's inputs).
    active: AtomicUsize,
    retrying: AtomicUsize,
    /// One permit per upstream connection (`connectionPool.tcp.maxConnections`).
    connections: tokio::sync::Semaphore,
    /// Attempts waiting for a permit.
    pending: AtomicUsize,
    /// Attempts in flight per endpoint (least-request's load).
    load: Vec<AtomicUsize>,
    /// Idle connections per endpoint.
    pools: Vec<Arc<Pool>>,
    outliers: Option<Outliers>,
    /// Endpoints in more than one priority (locality failover) or marked unhealthy.
    prioritized: bool,
    /// Every endpoint's index, and the indices of each subset's endpoints.
    all: Vec<usize>,
    subsets: BTreeMap<String, Vec<usize>>,
}

/// Counts one in-flight item for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Self(c)
    }

    /// Counts one more unless `c` is already at `max`.
    fn bounded(c: &'a AtomicUsize, max: usize) -> Option<Self> {
        c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Self(c))
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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

/// The outbound routes of `cfg`, each with its own TLS client expecting the service's
/// identities.
fn build_routes(
    cfg: &SidecarConfig,
    svid: &Arc<SvidResolver>,
    bundles: &SharedBundles,
    old: &[Arc<Route>],
    stats: &Stats,
) -> Result<Vec<Arc<Route>>, SidecarError> {
    let mut routes = Vec::new();
    for s in &cfg.services {
        // An unchanged service keeps its route: idle connections, outlier state, counters.
        if let Some(r) = old.iter().find(|r| {
            r.host == s.host
                && r.endpoints == s.endpoints
                && r.traffic == s.traffic
                && r.protocol == s.protocol
        }) {
            routes.push(r.clone());
            continue;
        }
        let alpn = match s.protocol {
            HttpVersion::Http1 => ALPN_HTTP1,
            HttpVersion::Http2 => ALPN_H2,
        };
        let tls = upstream_tls(svid, bundles, &s.endpoints, alpn.to_vec())?;
        routes.push(Arc::new(Route {
            host: s.host.clone(),
            metrics: stats.service(Direction::Outbound, s.host.as_str()),
            endpoints: s.endpoints.clone(),
            next: AtomicUsize::new(0),
            tls: Arc::new(tls),
            traffic: s.traffic.clone(),
            protocol: s.protocol,
            active: AtomicUsize::new(0),
            retrying: AtomicUsize::new(0),
            connections: tokio::sync::Semaphore::new(
                usize::try_from(s.traffic.connection_pool.max_connections)
                    .unwrap_or(usize::MAX)
                    .min(tokio::sync::Semaphore::MAX_PERMITS),
            ),
            pending: AtomicUsize::new(0),
            load: s.endpoints.iter().map(|_| AtomicUsize::new(0)).collect(),
            pools: s.endpoints.iter().map(|_| Arc::default()).collect(),
            outliers: outlier_detection(s).map(|o| Outliers::new(o, s.endpoints.len())),
            prioritized: prioritized(&s.endpoints),
            all: (0..s.endpoints.len()).collect(),
            subsets: s
                .traffic
                .routing
                .subsets
                .iter()
                .map(|sub| {
                    let members = (0..s.endpoints.len())
                        .filter(|&i| sub.selects(&s.endpoints[i].labels))
                        .collect();
                    (sub.name.clone(), members)
                })
                .collect(),
        }));
    }
    for r in &routes {
        // A new route with failover groups gets its prober (a kept route keeps its own).
        if r.prioritized && r.outliers.is_some() && !old.iter().any(|o| Arc::ptr_eq(o, r)) {
            tokio::spawn(probe_ejected(Arc::downgrade(r)));
        }
    }
    Ok(routes)
}

fn prioritized(endpoints: &[Endpoint]) -> bool {
    endpoints
        .iter()
        .any(|e| e.priority != endpoints[0].priority || !e.healthy)
}

/// The service's outlier detection: its own, or — when it has failover priorities and none is
/// configured — one that lets failover work without tuning (Istio needs it set by hand):
/// three consecutive gateway errors (refused, not delivered, 502–504, timeouts) or five 5xx
/// eject for 5 s (growing with each ejection), and every endpoint but the last may go.
fn outlier_detection(s: &OutboundService) -> Option<OutlierDetection> {
    s.traffic.outlier_detection.clone().or_else(|| {
        prioritized(&s.endpoints).then(|| OutlierDetection {
            consecutive_5xx_errors: 5,
            consecutive_gateway_errors: 3,
            base_ejection_time: Duration::from_secs(5),
            max_ejection_percent: 100,
        })
    })
}

/// Starts the configured listeners.
pub async fn start(
    cfg: SidecarConfig,
    svid: Arc<SvidResolver>,
    bundles: SharedBundles,
) -> Result<Running, SidecarError> {
    let provider = verify::provider();
    let mut tasks = Vec::new();
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
    for f in &cfg.tcp {
        let (listener, bound) = bind(f.listen).await?;
        tcp_addrs.push(bound);
        tasks.push(tcp::serve_outbound(
            listener,
            f.listen,
            tcp_routes.clone(),
            stats.clone(),
        ));
    }
    if let Some(addr) = cfg.outbound {
        let (listener, bound) = bind(addr).await?;
        out_addr = Some(bound);
        tasks.push(serve_plain(
            listener,
            (routes.clone(), stats.clone()),
            |(routes, stats), req| outbound(routes, stats, req),
        ));
    }
    if let Some(addr) = cfg.inbound {
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
        let stats = stats.clone();
        let (listener, bound) = bind(addr).await?;
        in_addr = Some(bound);
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (server, names) = (server.clone(), names.clone());
                let inb = Inbound {
                    app,
                    app_protocol,
                    app_pool: app_pool.clone(),
                    metrics: metrics.clone(),
                    policies: policies.clone(),
                    stats: stats.clone(),
                };
                tokio::spawn(async move {
                    let handshake = async {
                        let start = tokio_rustls::LazyConfigAcceptor::new(
                            rustls::server::Acceptor::default(),
                            tcp,
                        )
                        .await
                        .ok()?;
                        if let Some(name) = start.client_hello().server_name() {
                            let served = current(&names);
                            let ok = served.is_empty()
                                || Hostname::canonicalize(name).is_ok_and(|n| served.contains(&n));
                            if !ok {
                                return None;
                            }
                        }
                        start.into_stream(server).await.ok()
                    };
                    let Ok(Some(tls)) = tokio::time::timeout(CONNECT_TIMEOUT, handshake).await
                    else {
                        inb.stats.handshake(Direction::Inbound, false);
                        return;
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
                    let io = TokioIo::new(tls);
                    let _ = if h2 {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await
                    } else {
                        hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(HEADER_READ_TIMEOUT)
                            .serve_connection(io, svc)
                            .await
                    };
                });
            }
        }));
    }
    let mut admin_addr = None;
    if let Some(addr) = cfg.admin {
        let (listener, bound) = bind(addr).await?;
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
        tasks,
    })
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

/// Serves plaintext HTTP/1.1 and HTTP/2 (prior knowledge, as gRPC clients speak it) on
/// `listener`, each request handled by `handler` with a clone of `state`.
fn serve_plain<S, F, Fut>(
    listener: TcpListener,
    state: S,
    handler: F,
) -> tokio::task::JoinHandle<()>
where
    S: Clone + Send + Sync + 'static,
    F: Fn(S, Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handler(state.clone(), req));
                let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                b.http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT);
                let _ = b.serve_connection(TokioIo::new(tcp), svc).await;
            });
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

/// The service name a request gives: its authority (HTTP/2, or an absolute-form target), else
/// its `Host` header, without the port and a final dot — not yet checked or lower-cased.
fn host_of(req: &Request<Incoming>) -> Option<&str> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(hyper::header::HOST)?.to_str().ok()?,
    };
    let name = match raw.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|c| c.is_ascii_digit()) => h,
        _ => raw,
    };
    Some(name.strip_suffix('.').unwrap_or(name))
}

/// ALPN protocol names: HTTP/2 and HTTP/1.1 between sidecars.
const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Sets the request's version and target for the next hop: HTTP/1.1 takes the origin form and a
/// `Host` header (added from `authority` when the request came over HTTP/2, which has none);
/// HTTP/2 takes the absolute form, whose authority becomes `:authority`.
fn set_target(req: &mut Request<Body>, version: HttpVersion, authority: &str, uri: &hyper::Uri) {
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    match version {
        HttpVersion::Http1 => {
            *req.version_mut() = hyper::Version::HTTP_11;
            *req.uri_mut() = if uri.scheme().is_none() && uri.authority().is_none() {
                uri.clone()
            } else {
                pq.parse().unwrap_or_default()
            };
            if !req.headers().contains_key(hyper::header::HOST)
                && let Ok(v) = HeaderValue::from_str(authority)
            {
                req.headers_mut().insert(hyper::header::HOST, v);
            }
        }
        HttpVersion::Http2 => {
            *req.version_mut() = hyper::Version::HTTP_2;
            *req.uri_mut() = format!("http://{authority}{pq}")
                .parse()
                .unwrap_or_default();
            // :authority carries it; a second copy could disagree.
            req.headers_mut().remove(hyper::header::HOST);
        }
    }
}

/// An upstream's response, ready to pass on.
fn response(mut resp: Response<Body>) -> Response<Body> {
    strip_hop_by_hop(resp.headers_mut());
    // Only a sidecar may say a request was not delivered; an app's copy is dropped.
    resp.headers_mut().remove(&NOT_DELIVERED);
    resp
}

/// Set by a receiving sidecar on an answer to a request it never handed to its app (the app
/// refused the connection), or to a request safe to repeat (an idempotent method, no body)
/// whose reused connection to the app broke — as it does when the app dies with idle
/// connections open: the calling sidecar may send it elsewhere like a connection failure, and
/// removes the header.
const NOT_DELIVERED: HeaderName = HeaderName::from_static("x-meshfed-not-delivered");

/// Marks a receiving sidecar's answer as [`NOT_DELIVERED`], saying why.
fn not_delivered(mut r: Response<Body>, why: &'static str) -> Response<Body> {
    r.headers_mut()
        .insert(NOT_DELIVERED, HeaderValue::from_static(why));
    r
}

/// An upstream answer: [`Outcome::NotDelivered`] when the receiving sidecar says so.
fn answered(resp: Response<Body>) -> Outcome {
    let not_delivered = resp.headers().contains_key(&NOT_DELIVERED);
    let resp = response(resp);
    if not_delivered {
        Outcome::NotDelivered(resp)
    } else {
        Outcome::Answer(resp)
    }
}

/// Request bodies up to this size are kept so the request can be retried; larger ones stream
/// and are retried only when the connection failed (nothing was sent).
pub const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// The request body, kept for replay or streamed once.
enum Payload {
    Kept(Bytes),
    Stream(Option<Body>),
}

impl Payload {
    fn take(&mut self) -> Option<Body> {
        match self {
            // An empty body boxes without allocating.
            Self::Kept(b) if b.is_empty() => Some(Empty::new().map_err(|n| match n {}).boxed()),
            Self::Kept(b) => Some(Full::new(b.clone()).map_err(|n| match n {}).boxed()),
            Self::Stream(s) => s.take(),
        }
    }

    /// Puts back a streamed body that was never sent.
    fn restore(&mut self, body: Body) {
        if let Self::Stream(s @ None) = self {
            *s = Some(body);
        }
    }

    fn replayable(&self) -> bool {
        match self {
            Self::Kept(_) => true,
            Self::Stream(s) => s.is_some(),
        }
    }
}

/// What one attempt came to.
enum Outcome {
    Answer(Response<Body>),
    /// Connecting or the TLS handshake failed: nothing was sent.
    ConnectFailed(String),
    /// The receiving sidecar could not hand the request to its app (its answer, without the
    /// marker): retried like a connection failure.
    NotDelivered(Response<Body>),
    /// The upstream broke the exchange after the request was (partly) sent.
    Reset(String),
    /// The per-try timeout passed.
    TimedOut,
    /// The connection pool and its queue were full: refused without trying.
    Overflow,
    /// The client's own request body broke (bad chunked framing, a reset): not the
    /// endpoint's fault, never retried, answered 400 and the connection closed.
    BadRequestBody(String),
}

impl Outcome {
    /// An exchange that broke after sending began: the client's body, or the upstream.
    fn broken(e: &hyper::Error) -> Self {
        if e.is_user() {
            Self::BadRequestBody(e.to_string())
        } else {
            Self::Reset(e.to_string())
        }
    }

    fn retryable(&self, on: &RetryOn, payload: &Payload) -> bool {
        match self {
            Self::ConnectFailed(_) => on.connect_failure,
            Self::NotDelivered(_) => on.connect_failure && payload.replayable(),
            Self::Reset(_) => on.reset && payload.replayable(),
            Self::TimedOut => on.timeout() && payload.replayable(),
            Self::Answer(r) => on.status(r.status().as_u16()) && payload.replayable(),
            Self::Overflow | Self::BadRequestBody(_) => false,
        }
    }

    /// What outlier detection makes of it; `None` when the endpoint was never tried.
    fn verdict(&self) -> Option<Verdict> {
        Some(match self {
            Self::Answer(r) => match r.status().as_u16() {
                502..=504 => Verdict::GatewayError,
                500..=599 => Verdict::ServerError,
                _ => Verdict::Success,
            },
            Self::ConnectFailed(_) | Self::NotDelivered(_) | Self::Reset(_) | Self::TimedOut => {
                Verdict::GatewayError
            }
            Self::Overflow | Self::BadRequestBody(_) => return None,
        })
    }

    fn into_response(self) -> Response<Body> {
        match self {
            Self::Answer(r) | Self::NotDelivered(r) => r,
            Self::ConnectFailed(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
            Self::Reset(e) => text(StatusCode::BAD_GATEWAY, format!("UpstreamError: {e}\n")),
            Self::TimedOut => text(
                StatusCode::GATEWAY_TIMEOUT,
                "UpstreamTimeout: no answer within perTryTimeout\n",
            ),
            Self::BadRequestBody(e) => {
                let mut r = text(StatusCode::BAD_REQUEST, format!("BadRequestBody: {e}\n"));
                r.headers_mut()
                    .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
                r
            }
            Self::Overflow => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "UpstreamOverflow: every connection to the service is busy and the queue is full\n",
            ),
        }
    }
}

/// Lowers a gauge when dropped (also when the attempt is cancelled by a timeout).
struct GaugeGuard<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Why an upstream connection was not made: a stable reason and what happened.
#[derive(Debug, thiserror::Error)]
#[error("{reason}: {detail}")]
struct ConnectError {
    /// `UpstreamConnect` (TCP), `UpstreamTimeout`, `UpstreamTls` or a verifier reason.
    reason: &'static str,
    detail: String,
}

impl ConnectError {
    fn new(reason: &'static str, detail: impl std::fmt::Display) -> Self {
        Self {
            reason,
            detail: detail.to_string(),
        }
    }
}

/// Connects and handshakes with one endpoint, expecting the route's identities.
async fn connect(
    tls: Arc<rustls::ClientConfig>,
    endpoint: &Endpoint,
    service: &Hostname,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
    let addr = endpoint.addr;
    // The SNI names the service: the peer's exported name through a gateway, else the
    // service's own hostname; the server sidecar refuses names it does not serve (domain
    // fronting), and SPIFFE verification does not depend on it.
    let sni = endpoint.sni.as_ref().unwrap_or(service).as_str().to_owned();
    let connect = async move {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| ConnectError::new("UpstreamConnect", e))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(sni).map_err(|e| ConnectError::new("UpstreamTls", e))?;
        tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| {
                let reason = e
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<rustls::Error>())
                    .and_then(meshfed_trust::VerifyError::from_rustls)
                    .map_or("UpstreamTls", |v| v.reason());
                ConnectError::new(reason, e)
            })
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::new(
            "UpstreamTimeout",
            format!("connecting to {addr}"),
        )),
    }
}

/// One attempt at one endpoint.
async fn attempt(
    route: &Route,
    stats: &Stats,
    index: usize,
    head: &hyper::http::request::Parts,
    payload: &mut Payload,
    now: Instant,
) -> Outcome {
    let _load = InFlight::new(&route.load[index]);
    stats.upstream_active.inc();
    let _gauge = GaugeGuard(&stats.upstream_active);
    // The circuit breaker: a free connection, or a place in the bounded queue for one (HTTP/1.1:
    // a connection carries one request; HTTP/2 multiplexes one per endpoint).
    let _permit = match route.connections.try_acquire() {
        _ if route.protocol == HttpVersion::Http2 => None,
        Ok(p) => Some(p),
        Err(_) => {
            let max = usize::try_from(route.traffic.connection_pool.max_pending_requests)
                .unwrap_or(usize::MAX);
            let Some(_waiting) = InFlight::bounded(&route.pending, max) else {
                return Outcome::Overflow;
            };
            match route.connections.acquire().await {
                Ok(p) => Some(p),
                Err(_) => return Outcome::Overflow,
            }
        }
    };
    let pool = &route.pools[index];
    let run = async {
        let Some(body) = payload.take() else {
            return Outcome::Reset("the request body was already sent".into());
        };
        let mut req = Request::new(body);
        *req.method_mut() = head.method.clone();
        *req.headers_mut() = head.headers.clone();
        strip_hop_by_hop(req.headers_mut());
        set_target(&mut req, route.protocol, route.host.as_str(), &head.uri);
        // An idle (or the shared HTTP/2) connection first; a request it could not take goes on
        // a new one.
        let mut gate = pool.gate(route.protocol).await;
        if let Some(mut s) = pool.take(now) {
            drop(gate.take());
            match pool::send(&mut s, req).await {
                Ok(resp) => return answered(pool.keep(s, resp)),
                Err(SendError::NotSent(back, _)) => req = *back,
                Err(SendError::Broken(e)) => return Outcome::broken(&e),
            }
        }
        let connected = async {
            let tls = connect(route.tls.clone(), &route.endpoints[index], &route.host).await?;
            stats.handshake(Direction::Outbound, true);
            pool::handshake(tls, route.protocol)
                .await
                .map_err(|e| ConnectError::new("UpstreamConnect", e))
        };
        let mut s = match connected.await {
            Ok(s) => {
                pool.share(&s);
                drop(gate);
                s
            }
            Err(e) => {
                // Only a refused handshake is a handshake result; a refused TCP connect is not.
                if e.reason != "UpstreamConnect" {
                    stats.handshake(Direction::Outbound, false);
                }
                payload.restore(req.into_body());
                return Outcome::ConnectFailed(e.to_string());
            }
        };
        match pool::send(&mut s, req).await {
            Ok(resp) => answered(pool.keep(s, resp)),
            Err(SendError::NotSent(back, e)) => {
                payload.restore(back.into_body());
                Outcome::ConnectFailed(format!("UpstreamConnect: {e}"))
            }
            Err(SendError::Broken(e)) => Outcome::broken(&e),
        }
    };
    match route.traffic.retries.per_try_timeout {
        Some(t) => tokio::time::timeout(t, run)
            .await
            .unwrap_or(Outcome::TimedOut),
        None => run.await,
    }
}

/// The endpoint for the next attempt among `candidates`: a priority by Envoy's priority load
/// (`core::failover`: each takes `min(1, 1.4 × healthy share)` of what the better ones
/// left), then the load balancer within it. Healthy means configured healthy, not ejected, and — on a retry — not
/// tried already; when nothing is, the best priority's endpoints are used as they are.
fn choose(route: &Route, candidates: &[usize], tried: &[usize], now: Instant) -> usize {
    let ep = &route.endpoints;
    let not_ejected = |i: usize| route.outliers.as_ref().is_none_or(|o| o.available(i, now));
    let usable = |i: usize| ep[i].healthy && not_ejected(i) && !tried.contains(&i);
    let pick = |members: &[usize], ok: &dyn Fn(usize) -> bool| {
        members[route.traffic.load_balancer.pick(
            members.len(),
            route.next.fetch_add(1, Ordering::Relaxed),
            fastrand::usize(..),
            |k| ok(members[k]),
            |k| route.load[members[k]].load(Ordering::Relaxed),
        )]
    };
    if !route.prioritized {
        return pick(candidates, &usable);
    }
    let mut levels: Vec<u8> = candidates.iter().map(|&i| ep[i].priority).collect();
    levels.sort_unstable();
    levels.dedup();
    let members = |p: u8| -> Vec<usize> {
        candidates
            .iter()
            .copied()
            .filter(|&i| ep[i].priority == p)
            .collect()
    };
    let groups: Vec<(usize, usize)> = levels
        .iter()
        .map(|&p| {
            let m = members(p);
            (m.iter().filter(|&&i| usable(i)).count(), m.len())
        })
        .collect();
    let loads = meshfed_core::failover::priority_load(&groups);
    let Some(g) = meshfed_core::failover::pick_group(&loads, fastrand::f64()) else {
        // Nothing usable anywhere: the best priority as it is.
        return pick(&members(levels[0]), &not_ejected);
    };
    let level = levels[g];
    pick(&members(level), &usable)
}

/// How often a calling sidecar probes its ejected failover endpoints.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Probes the ejected endpoints of a service with failover groups every second and readmits
/// those whose sidecar says their app is ready again, so traffic fails back as soon as the
/// local endpoints recover rather than when a (growing) ejection ends. Ends with the route.
async fn probe_ejected(route: std::sync::Weak<Route>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(r) = route.upgrade() else { return };
        let Some(outliers) = &r.outliers else { return };
        let now = Instant::now();
        let ejected: Vec<usize> = (0..r.endpoints.len())
            .filter(|&i| !outliers.available(i, now))
            .collect();
        for i in ejected {
            if probe(&r, i).await {
                outliers.readmit(i, Instant::now());
                tracing::info!(service = %r.host, endpoint = %r.endpoints[i].addr, "readmitted: ready again");
            }
        }
    }
}

/// True when endpoint `i`'s sidecar answers [`READY_PATH`] with 200.
async fn probe(route: &Route, i: usize) -> bool {
    let run = async {
        let tls = connect(route.tls.clone(), &route.endpoints[i], &route.host)
            .await
            .ok()?;
        let mut conn = pool::handshake(tls, route.protocol).await.ok()?;
        let mut req = Request::new(Empty::new().map_err(|n| match n {}).boxed());
        let uri: hyper::Uri = READY_PATH.parse().ok()?;
        set_target(&mut req, route.protocol, route.host.as_str(), &uri);
        let resp = pool::send(&mut conn, req).await.ok()?;
        Some(resp.status() == StatusCode::OK)
    };
    tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Attempts until an answer that is not retried, the attempts are spent, or the budget is.
async fn attempts(
    route: &Route,
    candidates: &[usize],
    stats: &Stats,
    head: hyper::http::request::Parts,
    mut payload: Payload,
    t0: Instant,
) -> Response<Body> {
    let retries = &route.traffic.retries;
    let mut retry_guard = None;
    let mut n = 0;
    // Endpoints tried before this attempt (filled only when there is a retry: no allocation
    // for the usual request).
    let mut tried: Vec<usize> = Vec::new();
    loop {
        // The request's start stands for now on the first attempt (one clock read less).
        let now = if n == 0 { t0 } else { Instant::now() };
        let i = choose(route, candidates, &tried, now);
        let outcome = attempt(route, stats, i, &head, &mut payload, now).await;
        if let (Some(o), Some(v)) = (&route.outliers, outcome.verdict())
            && o.record(i, v, Instant::now())
        {
            stats.ejections.inc();
            tracing::info!(service = %route.host, endpoint = %route.endpoints[i].addr, "outlier ejected");
        }
        if matches!(outcome, Outcome::Overflow) {
            stats.overflows.inc();
        }
        if n >= retries.attempts || !outcome.retryable(&retries.retry_on, &payload) {
            return outcome.into_response();
        }
        // A request that reached no app (refused, or not delivered by the endpoint's sidecar)
        // adds no load to any app when sent elsewhere: it is outside the retry budget, and goes
        // at once to an endpoint it has not tried, if there is one. That is what keeps
        // failover free of errors when every request finds the local endpoints down at once.
        let undelivered = matches!(
            outcome,
            Outcome::ConnectFailed(_) | Outcome::NotDelivered(_)
        );
        if retry_guard.is_none() && !undelivered {
            if !traffic::retry_allowed(
                route.active.load(Ordering::Relaxed),
                route.retrying.load(Ordering::Relaxed),
            ) {
                stats.retry_budget_exhausted.inc();
                return outcome.into_response();
            }
            retry_guard = Some(InFlight::new(&route.retrying));
        }
        drop(outcome);
        tried.push(i);
        n += 1;
        stats.retries.inc();
        let now = Instant::now();
        let elsewhere = candidates.iter().any(|&k| {
            !tried.contains(&k)
                && route.endpoints[k].healthy
                && route.outliers.as_ref().is_none_or(|o| o.available(k, now))
        });
        if !(undelivered && elsewhere) {
            tokio::time::sleep(traffic::backoff(n, fastrand::f64())).await;
        }
    }
}

async fn outbound(
    routes: Shared<Vec<Arc<Route>>>,
    stats: Arc<Stats>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let t0 = Instant::now();
    let routes = current(&routes);
    let name = host_of(&req);
    // Service names are ASCII and compared without case: no canonical copy is made unless the
    // name matches no route.
    let found = name.and_then(|n| {
        routes
            .iter()
            .find(|r| r.host.as_str().eq_ignore_ascii_case(n))
    });
    let Some(route) = found else {
        let Some(host) = name.and_then(|n| n.to_ascii_lowercase().parse::<Hostname>().ok()) else {
            return Ok(text(
                StatusCode::BAD_REQUEST,
                "NoHost: the request names no valid Host\n",
            ));
        };
        // Not counted per service: the name came from the client, so it is unbounded.
        return Ok(text(
            StatusCode::NOT_FOUND,
            format!("NoRoute: no service {host}\n"),
        ));
    };
    let resp = routed(route, &stats, req, t0).await;
    route.metrics.record(resp.status().as_u16(), t0.elapsed());
    Ok(resp)
}

/// An outbound request for a known service: its HTTP route and subset, faults, then attempts
/// within the route timeout. `t0` is when it came (moved on past any wait here).
async fn routed(
    route: &Route,
    stats: &Stats,
    req: Request<Incoming>,
    mut t0: Instant,
) -> Response<Body> {
    let host = &route.host;
    let target = route.traffic.routing.decide(
        req.method().as_str(),
        req.uri().path(),
        |name| req.headers().get(name).and_then(|v| v.to_str().ok()),
        fastrand::u32(..100),
    );
    let candidates = match target {
        Target::All => &route.all,
        Target::Subset(name) => match route.subsets.get(name) {
            Some(c) => c,
            None => &Vec::new(),
        },
        Target::NoRoute => {
            return text(
                StatusCode::NOT_FOUND,
                format!("NoRouteMatched: no HTTP route of {host} matches this request\n"),
            );
        }
    };
    let fault = &route.traffic.fault;
    if let Some(d) = &fault.delay
        && d.share.hit(fastrand::u32(..Share::MILLION))
    {
        stats.fault_delays.inc();
        tokio::time::sleep(d.fixed_delay).await;
        t0 = Instant::now();
    }
    if let Some(a) = &fault.abort
        && a.share.hit(fastrand::u32(..Share::MILLION))
    {
        stats.fault_aborts.inc();
        return text(
            StatusCode::from_u16(a.http_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            format!("FaultInjected: abort by the traffic policy for {host}\n"),
        );
    }
    if candidates.is_empty() {
        let which = match target {
            Target::Subset(name) => format!("subset {name} of {host}"),
            _ => host.to_string(),
        };
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("NoHealthyEndpoint: {which} has no endpoints\n"),
        );
    }
    // The circuit breaker's request limit (`http2MaxRequests`): beyond it, 503 at once.
    let max = usize::try_from(route.traffic.connection_pool.max_requests).unwrap_or(usize::MAX);
    let Some(_active) = InFlight::bounded(&route.active, max) else {
        stats.overflows.inc();
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "UpstreamOverflow: {max} requests to {host} are in flight (http2MaxRequests)\n"
            ),
        );
    };
    let (mut head, body) = req.into_parts();
    // The app cannot speak for anyone: identity is added on the receiving side only.
    head.headers.remove(&CLIENT_ID_HEADER);
    let run = async {
        let replay = route.traffic.retries.attempts > 0
            && body
                .size_hint()
                .exact()
                .is_some_and(|n| n <= MAX_REPLAY_BODY);
        let payload = if body.is_end_stream() {
            Payload::Kept(Bytes::new())
        } else if replay {
            match body.collect().await {
                Ok(b) => {
                    t0 = Instant::now();
                    Payload::Kept(b.to_bytes())
                }
                Err(e) => {
                    return text(StatusCode::BAD_REQUEST, format!("BadRequestBody: {e}\n"));
                }
            }
        } else {
            Payload::Stream(Some(boxed(body)))
        };
        attempts(route, candidates, stats, head, payload, t0).await
    };
    match route.traffic.timeout {
        None => run.await,
        Some(t) => match tokio::time::timeout(t, run).await {
            Ok(r) => r,
            Err(_) => {
                stats.timeouts.inc();
                text(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("UpstreamTimeout: no answer within the route timeout of {t:?}\n"),
                )
            }
        },
    }
}

/// What every inbound connection shares.
struct Inbound {
    app: SocketAddr,
    app_protocol: HttpVersion,
    /// Idle connections to the app.
    app_pool: Arc<Pool>,
    /// Requests and latency, labelled with this workload's service.
    metrics: Arc<ServiceMetrics>,
    policies: Shared<[Policy]>,
    stats: Arc<Stats>,
}

/// The verified caller of one inbound connection, and the header that tells the app.
struct Caller {
    id: SpiffeId,
    header: Option<HeaderValue>,
}

async fn inbound(
    ctx: Arc<(Inbound, Caller)>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let t0 = Instant::now();
    let resp = to_app(&ctx.0, &ctx.1, req, t0).await;
    ctx.0.metrics.record(resp.status().as_u16(), t0.elapsed());
    Ok(resp)
}

/// The path a calling sidecar probes an ejected endpoint on: answered by the receiving
/// sidecar itself (200 when its app accepts connections, 503 otherwise), never by the app.
pub const READY_PATH: &str = "/.well-known/meshfed/ready";

/// An inbound request from a verified caller: path check, authorization, then the app.
/// `t0` is when the request came.
async fn to_app(
    inb: &Inbound,
    caller: &Caller,
    req: Request<Incoming>,
    t0: Instant,
) -> Response<Body> {
    if req.uri().path() == READY_PATH && req.method() == hyper::Method::GET {
        let ready = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(inb.app))
            .await
            .is_ok_and(|r| r.is_ok());
        return if ready {
            text(StatusCode::OK, "ready\n")
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, "AppUnavailable\n")
        };
    }
    // The path is normalized once; the same string is checked and forwarded.
    let path = match authz::normalize_path(req.uri().path()) {
        Ok(p) => p,
        Err(e) => {
            inb.stats.bad_requests.inc();
            return text(StatusCode::BAD_REQUEST, format!("{}: {e}\n", e.reason()));
        }
    };
    let decision = authz::decide(
        &current(&inb.policies),
        &authz::Request {
            caller: &caller.id,
            method: req.method().as_str(),
            path: &path,
        },
    );
    if let Decision::Deny { policy, reason } = decision {
        inb.stats.denied.inc();
        let by = policy.map_or_else(String::new, |p| format!(" (policy {p})"));
        return text(
            StatusCode::FORBIDDEN,
            format!("AccessDenied: {reason}{by}\n"),
        );
    }
    inb.stats.allowed.inc();
    let app = inb.app;
    // The path the policies saw, when normalizing changed it.
    let rewritten = match path {
        Cow::Borrowed(_) => None,
        Cow::Owned(p) => Some(p),
    };
    let (mut parts, body) = req.into_parts();
    // Needed for HTTP/2 to the app (`:authority`) or an HTTP/1.1 request without `Host`.
    let authority = (inb.app_protocol == HttpVersion::Http2
        || !parts.headers.contains_key(hyper::header::HOST))
    .then(|| {
        parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                parts
                    .headers
                    .get(hyper::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .map_or_else(|| app.to_string(), str::to_owned)
    });
    if rewritten.is_some() || parts.uri.scheme().is_some() {
        let path = rewritten.as_deref().unwrap_or(parts.uri.path());
        let target = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        match hyper::Uri::try_from(target) {
            Ok(u) => parts.uri = u,
            Err(_) => {
                return text(StatusCode::BAD_REQUEST, "InvalidPath: unparseable target\n");
            }
        }
    }
    // Remove every client-sent copy, also one named in Connection (H12), then add ours.
    strip_hop_by_hop(&mut parts.headers);
    // (`insert` and `remove` both drop every value the name had.)
    match &caller.header {
        Some(v) => parts.headers.insert(CLIENT_ID_HEADER, v.clone()),
        None => parts.headers.remove(&CLIENT_ID_HEADER),
    };
    // Hop-by-hop headers are already gone (above).
    let target = parts.uri.clone();
    let mut req = Request::from_parts(parts, boxed(body));
    set_target(
        &mut req,
        inb.app_protocol,
        authority.as_deref().unwrap_or_default(),
        &target,
    );
    let mut gate = inb.app_pool.gate(inb.app_protocol).await;
    if let Some(mut s) = inb.app_pool.take(t0) {
        drop(gate.take());
        // Repeating it elsewhere does no harm if the app saw it after all.
        let repeatable = matches!(
            *req.method(),
            hyper::Method::GET
                | hyper::Method::HEAD
                | hyper::Method::OPTIONS
                | hyper::Method::TRACE
        ) && req.body().is_end_stream();
        match pool::send(&mut s, req).await {
            Ok(resp) => return response(inb.app_pool.keep(s, resp)),
            Err(SendError::NotSent(back, _)) => req = *back,
            Err(SendError::Broken(e)) => {
                let r = text(StatusCode::BAD_GATEWAY, format!("AppError: {e}\n"));
                return if repeatable {
                    not_delivered(r, "app-connection-lost")
                } else {
                    r
                };
            }
        }
    }
    let connected = async {
        let tcp = TcpStream::connect(app).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        pool::handshake(tcp, inb.app_protocol)
            .await
            .map_err(|e| e.to_string())
    };
    let mut s = match connected.await {
        Ok(s) => {
            inb.app_pool.share(&s);
            drop(gate);
            s
        }
        Err(e) => {
            let r = text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("AppUnavailable: {e}\n"),
            );
            return not_delivered(r, "app-unavailable");
        }
    };
    match pool::send(&mut s, req).await {
        Ok(resp) => response(inb.app_pool.keep(s, resp)),
        Err(SendError::NotSent(_, e) | SendError::Broken(e)) => {
            text(StatusCode::BAD_GATEWAY, format!("AppError: {e}\n"))
        }
    }
}
