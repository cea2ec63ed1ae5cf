//! The gateways' data path: egress, ingress and the discovery forwarder.
//!
//! Egress: a local sidecar connects in plaintext TCP and starts its own mTLS handshake with the
//! server sidecar; the egress reads the server name from that ClientHello (never terminating
//! it), finds the peer that exports the name, opens a tunnel stream to the peer's ingress
//! gateway ([`crate::tunnel`]: TCP + rustls or QUIC, authenticated with its own gateway SVID),
//! and relays the sidecar's bytes inside it. It probes each peer's ingress on an interval and
//! reports reachability and tunnel RTT.
//!
//! Ingress: the peer's egress gateway must present the peer's `clientID`; inside that tunnel the
//! ingress reads the client sidecar's ClientHello and accepts it only if the name is exported to
//! *that* peer. Anything else — another peer's export, an unknown name, no or a malformed
//! ClientHello, one larger than 16 KiB — is refused before any upstream connection is opened,
//! counted by reason. An accepted stream is spliced to a local endpoint (round robin, skipping
//! endpoints that refuse the connection), so the
//! client and server sidecars complete mTLS end to end: the gateways never see plaintext and
//! hold no workload keys. The ingress serves both tunnel transports on one port (TCP and UDP).
//!
//! Discovery: the ingress gateway's discovery port forwards to the local peering service, so a
//! peer needs only the gateway addresses; the peering stream's own mTLS passes through untouched
//! (anything that does not start with a TLS ClientHello is refused).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use meshfed_core::{Hostname, SpiffeId};
use meshfed_trust::verify::{self, Expect, SharedBundles, SpiffeClientVerifier, SvidResolver};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::sni::{self, ClientHello, MAX_PEEK, SniError};
pub use crate::stats::GatewayStats;
use crate::stats::{Counted, GatewayMetrics, PeerCounters};
use crate::tunnel::{
    self, ALPN_PROBE, ALPN_TUNNEL, CODE_DRAINING, CODE_REFUSED, Dialer, PeerIdentity, Target,
    Transport, TunnelError,
};

/// Longest wait for a ClientHello, a tunnel handshake, or an upstream connection.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Local endpoints an ingress tries for one stream before refusing it.
const MAX_ENDPOINT_TRIES: usize = 3;

/// One peer, as the ingress sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngressPeer {
    pub name: String,
    /// The identity its egress gateway presents (`spec.security.clientID`).
    pub client_id: SpiffeId,
    /// What it may reach: exported name → local endpoints (server sidecars' inbound).
    pub exports: BTreeMap<Hostname, Vec<SocketAddr>>,
}

/// Where the egress sends one exported name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRoute {
    pub peer: String,
    /// The peer's ingress gateway (`spec.remote.addresses` : `servicePort`).
    pub ingress: SocketAddr,
    /// Who the peer's ingress must be.
    pub ingress_id: PeerIdentity,
}

/// How an ingress serves.
#[derive(Debug, Clone)]
pub struct IngressOptions {
    /// Also serve the QUIC tunnel (UDP, same port as TCP).
    pub quic: bool,
    /// The QUIC stateless-reset key; keep it across restarts (see [`crate::tunnel`]).
    pub reset_key: Option<[u8; 32]>,
    /// The metric families the gateway counts in (shared by a process's gateways).
    pub metrics: Arc<GatewayMetrics>,
}

impl Default for IngressOptions {
    fn default() -> Self {
        Self {
            quic: true,
            reset_key: None,
            metrics: GatewayMetrics::new(),
        }
    }
}

/// How an egress dials and probes.
#[derive(Debug, Clone)]
pub struct EgressOptions {
    pub transport: Transport,
    /// How often to probe each peer's ingress; `None` never probes.
    pub probe_interval: Option<Duration>,
    /// The metric families the gateway counts in (shared by a process's gateways).
    pub metrics: Arc<GatewayMetrics>,
}

impl Default for EgressOptions {
    fn default() -> Self {
        Self {
            transport: Transport::default(),
            probe_interval: Some(Duration::from_secs(5)),
            metrics: GatewayMetrics::new(),
        }
    }
}

/// A running gateway. Dropping it stops everything at once (connections in flight are cut);
/// [`Gateway::drain`] stops gracefully.
#[derive(Debug)]
pub struct Gateway {
    pub addr: SocketAddr,
    pub stats: Arc<GatewayStats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    kill: watch::Sender<bool>,
    draining: Arc<AtomicBool>,
    quic: Option<quinn::Endpoint>,
    dialer: Option<Arc<Dialer>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Gateway {
    /// Stops at once: listeners and every connection in flight are closed (what dropping the
    /// gateway does). The addresses are free again once the tasks have ended.
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.kill.send_replace(true);
        if let Some(e) = self.quic.take() {
            e.close(0u32.into(), b"gateway stopped");
        }
        if let Some(d) = self.dialer.take() {
            d.close();
        }
    }

    /// Graceful drain: stops accepting (the listeners close, so new connections are refused
    /// and go elsewhere; QUIC refuses new connections and new streams with a retryable code),
    /// then waits for the streams in flight to finish, at most `deadline`. Returns how many
    /// were still open when it gave up (they are cut).
    pub async fn drain(mut self, deadline: Duration) -> u64 {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.draining.store(true, Ordering::Relaxed);
        if let Some(e) = &self.quic {
            e.set_server_config(None);
        }
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let open = self.stats.active.get();
            if open == 0 || tokio::time::Instant::now() >= until {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The egress's tunnel transport (`None` for other roles).
    pub fn transport(&self) -> Option<Transport> {
        self.dialer.as_ref().map(|d| d.transport())
    }
}

/// Runs `fut` until it ends or the gateway is stopped.
fn spawn_killable<F>(kill: &watch::Receiver<bool>, fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut kill = kill.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = fut => {}
            _ = kill.wait_for(|k| *k) => {}
        }
    });
}

/// [`spawn_killable`], counted as an active connection while it runs.
fn spawn_conn<F>(stats: &Arc<GatewayStats>, kill: &watch::Receiver<bool>, fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let active = ActiveGuard::new(stats);
    spawn_killable(kill, async move {
        let _active = active;
        fut.await;
    });
}

/// Counts a connection as active for as long as its task holds it.
struct ActiveGuard(Arc<GatewayStats>);

impl ActiveGuard {
    fn new(stats: &Arc<GatewayStats>) -> Self {
        stats.active.inc();
        Self(stats.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.dec();
    }
}

/// Counts a stream against its peer while it is relayed.
struct PeerStream(Arc<PeerCounters>);

impl PeerStream {
    fn new(c: Arc<PeerCounters>) -> Self {
        c.streams.inc();
        c.active.inc();
        Self(c)
    }
}

impl Drop for PeerStream {
    fn drop(&mut self) {
        self.0.active.dec();
    }
}

/// Reads from `s` until a whole ClientHello is buffered; returns it and the bytes read.
async fn read_hello<S: AsyncRead + Unpin>(
    s: &mut S,
) -> Result<(ClientHello, Vec<u8>), &'static str> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        loop {
            if let Some(h) = sni::parse(&buf).map_err(|e: SniError| e.reason())? {
                return Ok(h);
            }
            if buf.len() >= MAX_PEEK {
                return Err("ClientHelloTooLarge");
            }
            let mut chunk = [0u8; 4096];
            let want = chunk.len().min(MAX_PEEK - buf.len());
            let n = s
                .read(&mut chunk[..want])
                .await
                .map_err(|_| "ClientClosed")?;
            if n == 0 {
                return Err("ClientClosed");
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let hello = tokio::time::timeout(STEP_TIMEOUT, read)
        .await
        .map_err(|_| "ClientHelloTimeout")??;
    Ok((hello, buf))
}

/// Writes what each side already sent to the other, then relays both ways until either side
/// closes.
async fn splice<A, B>(mut down: A, mut up: B, to_up: &[u8], to_down: &[u8])
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    if up.write_all(to_up).await.is_err() || down.write_all(to_down).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
}

/// Relays between the peer's side and ours, counted against the peer for as long as it runs.
/// `from_peer` was already read from the peer's side (it goes to ours first); `sent_to_peer`
/// bytes of ours were already sent to the peer.
async fn relay_counted<P, L>(
    counters: Arc<PeerCounters>,
    peer_side: P,
    ours: L,
    from_peer: &[u8],
    sent_to_peer: usize,
) where
    P: AsyncRead + AsyncWrite + Unpin,
    L: AsyncRead + AsyncWrite + Unpin,
{
    let _stream = PeerStream::new(counters.clone());
    counters.bytes_from_peer.inc_by(from_peer.len() as u64);
    counters.bytes_to_peer.inc_by(sent_to_peer as u64);
    let peer_side = Counted {
        inner: peer_side,
        read: counters.clone(),
        to_peer: false,
    };
    let ours = Counted {
        inner: ours,
        read: counters,
        to_peer: true,
    };
    splice(ours, peer_side, &[], from_peer).await;
}

async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr).await?;
    let bound = l.local_addr()?;
    Ok((l, bound))
}

/// Accepts TCP connections until the task is aborted, handing each to `handle`.
fn accept_loop<F, Fut>(
    listener: TcpListener,
    stats: Arc<GatewayStats>,
    kill: watch::Receiver<bool>,
    handle: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            spawn_conn(&stats, &kill, handle(tcp));
        }
    })
}

/// What an ingress shares across its connections.
struct IngressCtx {
    peers: Arc<RwLock<Arc<Vec<IngressPeer>>>>,
    stats: Arc<GatewayStats>,
    next: AtomicUsize,
}

impl IngressCtx {
    /// The current configuration of the peer whose egress presented `caller`.
    fn peer(&self, caller: Option<SpiffeId>) -> Option<IngressPeer> {
        let caller = caller?;
        self.peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|p| p.client_id == caller)
            .cloned()
    }

    /// Reads the client's ClientHello from the tunnel and, if its name is exported to `peer`,
    /// connects to a local endpoint. Every refusal is counted and no upstream is opened.
    async fn admit<S: AsyncRead + Unpin>(
        &self,
        peer: &IngressPeer,
        tunnel: &mut S,
    ) -> Result<(TcpStream, Vec<u8>), &'static str> {
        let (hello, first) = read_hello(tunnel).await?;
        let endpoints = peer
            .exports
            .get(&hello.server_name)
            .filter(|e| !e.is_empty())
            .ok_or("NotExportedToPeer")?;
        // Round robin; an endpoint that refuses is skipped for the next (at most three tries,
        // within one step timeout), so one dead endpoint costs the caller nothing.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let tries = endpoints.len().min(MAX_ENDPOINT_TRIES);
        let connect = async {
            for k in 0..tries {
                let ep = endpoints[(start + k) % endpoints.len()];
                if let Ok(up) = TcpStream::connect(ep).await {
                    return Some(up);
                }
            }
            None
        };
        let up = tokio::time::timeout(STEP_TIMEOUT, connect)
            .await
            .ok()
            .flatten()
            .ok_or("EndpointUnreachable")?;
        let _ = up.set_nodelay(true);
        self.stats.upstream_connections.inc();
        Ok((up, first))
    }

    /// One admitted tunnel stream, relayed and counted against its peer.
    async fn relay<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        peer: &IngressPeer,
        tunnel: S,
        up: TcpStream,
        first: Vec<u8>,
    ) {
        relay_counted(self.stats.peer(&peer.name), tunnel, up, &first, 0).await;
    }
}

fn spiffe_id(cert: Option<&CertificateDer<'_>>) -> Option<SpiffeId> {
    cert.and_then(|c| meshfed_trust::svid::spiffe_id_of(c).ok())
}

/// The ingress: peers' egress gateways in (TCP + TLS and QUIC on the same port), local
/// endpoints out.
pub async fn start_ingress(
    listen: SocketAddr,
    peers: Arc<RwLock<Arc<Vec<IngressPeer>>>>,
    svid: Arc<SvidResolver>,
    bundles: SharedBundles,
    opts: IngressOptions,
) -> Result<Gateway, GatewayError> {
    let provider = verify::provider();
    let ids = peers
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|p| p.client_id.clone())
        .collect();
    let expect = Expect::Ids(ids);
    let verifier = SpiffeClientVerifier::new(bundles.clone(), expect.clone(), provider.clone());
    let quic_cfg = if opts.quic {
        // QUIC's close frame carries the refusal's text: it says no more than TCP's alert.
        let quiet = SpiffeClientVerifier::new(bundles, expect, provider.clone()).reticent();
        let tls = verify::server_config(svid.clone(), Arc::new(quiet), provider.clone())?;
        Some(tunnel::quic_server_config(tls)?)
    } else {
        None
    };
    let mut tls = verify::server_config(svid, Arc::new(verifier), provider)?;
    tls.alpn_protocols = vec![ALPN_TUNNEL.to_vec(), ALPN_PROBE.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let (listener, addr) = bind(listen).await?;
    // Every socket is bound before any task starts, so a failure leaves nothing behind.
    let endpoint = match quic_cfg {
        Some(cfg) => Some(quinn::Endpoint::new(
            tunnel::endpoint_config(opts.reset_key),
            Some(cfg),
            std::net::UdpSocket::bind(addr)?,
            Arc::new(quinn::TokioRuntime),
        )?),
        None => None,
    };
    let stats = Arc::new(GatewayStats::new("ingress", &opts.metrics));
    let (kill, kill_rx) = watch::channel(false);
    let draining = Arc::new(AtomicBool::new(false));
    let ctx = Arc::new(IngressCtx {
        peers,
        stats: stats.clone(),
        next: AtomicUsize::new(0),
    });
    let mut tasks = vec![{
        let ctx = ctx.clone();
        accept_loop(listener, stats.clone(), kill_rx.clone(), move |tcp| {
            let (acceptor, ctx) = (acceptor.clone(), ctx.clone());
            async move { ingress_tcp(&ctx, &acceptor, tcp).await }
        })
    }];
    let quic = match endpoint {
        Some(endpoint) => {
            let (e, ctx, kill, draining) = (
                endpoint.clone(),
                ctx.clone(),
                kill_rx.clone(),
                draining.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while let Some(incoming) = e.accept().await {
                    spawn_killable(
                        &kill,
                        ingress_quic(ctx.clone(), incoming, kill.clone(), draining.clone()),
                    );
                }
            }));
            Some(endpoint)
        }
        _ => None,
    };
    Ok(Gateway {
        addr,
        stats,
        tasks,
        kill,
        draining,
        quic,
        dialer: None,
    })
}

async fn ingress_tcp(ctx: &IngressCtx, acceptor: &tokio_rustls::TlsAcceptor, tcp: TcpStream) {
    let stats = &ctx.stats;
    let Ok(Ok(mut tunnel)) = tokio::time::timeout(STEP_TIMEOUT, acceptor.accept(tcp)).await else {
        stats.deny("-", "TunnelHandshakeFailed");
        return;
    };
    let conn = tunnel.get_ref().1;
    let caller = spiffe_id(conn.peer_certificates().and_then(|c| c.first()));
    let probe = conn.alpn_protocol() == Some(ALPN_PROBE);
    let Some(peer) = ctx.peer(caller) else {
        stats.deny("-", "UnknownPeer");
        return;
    };
    if probe {
        let _ = tunnel.shutdown().await;
        return;
    }
    stats.accepted.inc();
    match ctx.admit(&peer, &mut tunnel).await {
        Ok((up, first)) => ctx.relay(&peer, tunnel, up, first).await,
        Err(reason) => stats.deny(&peer.name, reason),
    }
}

async fn ingress_quic(
    ctx: Arc<IngressCtx>,
    incoming: quinn::Incoming,
    kill: watch::Receiver<bool>,
    draining: Arc<AtomicBool>,
) {
    let stats = &ctx.stats;
    let Ok(Ok(conn)) = tokio::time::timeout(STEP_TIMEOUT, async { incoming.accept()?.await }).await
    else {
        stats.deny("-", "TunnelHandshakeFailed");
        return;
    };
    let caller = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| spiffe_id(certs.first()));
    let Some(peer) = ctx.peer(caller) else {
        stats.deny("-", "UnknownPeer");
        conn.close(CODE_REFUSED.into(), b"unknown peer");
        return;
    };
    let peer = Arc::new(peer);
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        if draining.load(Ordering::Relaxed) {
            let _ = send.reset(CODE_DRAINING.into());
            let _ = recv.stop(CODE_DRAINING.into());
            continue;
        }
        stats.accepted.inc();
        let (ctx, peer) = (ctx.clone(), peer.clone());
        spawn_conn(&ctx.stats.clone(), &kill, async move {
            match ctx.admit(&peer, &mut recv).await {
                Ok((up, first)) => {
                    ctx.relay(&peer, tokio::io::join(recv, send), up, first)
                        .await;
                }
                Err(reason) => {
                    ctx.stats.deny(&peer.name, reason);
                    let _ = send.reset(CODE_REFUSED.into());
                    let _ = recv.stop(CODE_REFUSED.into());
                }
            }
        });
    }
}

/// The egress: local sidecars in, peers' ingress gateways out.
pub async fn start_egress(
    listen: SocketAddr,
    routes: Arc<RwLock<Arc<BTreeMap<Hostname, EgressRoute>>>>,
    svid: Arc<SvidResolver>,
    bundles: SharedBundles,
    opts: EgressOptions,
) -> Result<Gateway, GatewayError> {
    let (listener, addr) = bind(listen).await?;
    let stats = Arc::new(GatewayStats::new("egress", &opts.metrics));
    let dialer = Arc::new(Dialer::new(opts.transport, addr.ip(), svid, bundles)?);
    let (kill, kill_rx) = watch::channel(false);
    let mut tasks = vec![{
        let (routes, dialer, stats) = (routes.clone(), dialer.clone(), stats.clone());
        accept_loop(listener, stats.clone(), kill_rx, move |down| {
            let (routes, dialer, stats) = (routes.clone(), dialer.clone(), stats.clone());
            async move { egress_conn(&routes, &dialer, &stats, down).await }
        })
    }];
    if let Some(every) = opts.probe_interval {
        tasks.push(tokio::spawn(probe_loop(
            routes,
            dialer.clone(),
            stats.clone(),
            every,
        )));
    }
    Ok(Gateway {
        addr,
        stats,
        tasks,
        kill,
        draining: Arc::new(AtomicBool::new(false)),
        quic: None,
        dialer: Some(dialer),
    })
}

async fn egress_conn(
    routes: &RwLock<Arc<BTreeMap<Hostname, EgressRoute>>>,
    dialer: &Dialer,
    stats: &GatewayStats,
    mut down: TcpStream,
) {
    stats.accepted.inc();
    let (hello, first) = match read_hello(&mut down).await {
        Ok(x) => x,
        Err(reason) => {
            stats.deny("-", reason);
            return;
        }
    };
    let route = routes
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&hello.server_name)
        .cloned();
    let Some(route) = route else {
        stats.deny("-", "NoPeerExportsName");
        return;
    };
    let target = Target {
        addr: route.ingress,
        id: route.ingress_id.clone(),
    };
    let (tunnel, answered) = match dialer.open(&target, &first).await {
        Ok(x) => x,
        Err(reason) => {
            stats.deny(&route.peer, reason);
            return;
        }
    };
    stats.upstream_connections.inc();
    relay_counted(
        stats.peer(&route.peer),
        tunnel,
        down,
        &answered,
        first.len(),
    )
    .await;
}

/// Probes every peer ingress the routes name, all at once, every `every`.
async fn probe_loop(
    routes: Arc<RwLock<Arc<BTreeMap<Hostname, EgressRoute>>>>,
    dialer: Arc<Dialer>,
    stats: Arc<GatewayStats>,
    every: Duration,
) {
    loop {
        let targets: BTreeSet<(String, Target)> = routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|r| {
                (
                    r.peer.clone(),
                    Target {
                        addr: r.ingress,
                        id: r.ingress_id.clone(),
                    },
                )
            })
            .collect();
        let mut set = tokio::task::JoinSet::new();
        for (peer, target) in targets {
            let (dialer, stats) = (dialer.clone(), stats.clone());
            set.spawn(async move {
                let p = dialer.probe(&target).await;
                stats.peer(&peer).record_probe(p);
            });
        }
        while set.join_next().await.is_some() {}
        tokio::time::sleep(every).await;
    }
}

/// The discovery forwarder: the ingress gateway's discovery port, spliced to the local peering
/// service. Only connections that open with a TLS ClientHello pass.
pub async fn start_discovery(
    listen: SocketAddr,
    upstream: SocketAddr,
    metrics: &Arc<GatewayMetrics>,
) -> Result<Gateway, GatewayError> {
    let (listener, addr) = bind(listen).await?;
    let stats = Arc::new(GatewayStats::new("discovery", metrics));
    let (kill, kill_rx) = watch::channel(false);
    let task = {
        let st = stats.clone();
        accept_loop(listener, stats.clone(), kill_rx, move |mut down| {
            let stats = st.clone();
            async move {
                stats.accepted.inc();
                let first = match read_hello(&mut down).await {
                    Ok((_, first)) => first,
                    Err(reason) => {
                        stats.deny("-", reason);
                        return;
                    }
                };
                let Ok(Ok(up)) =
                    tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(upstream)).await
                else {
                    stats.deny("-", "EndpointUnreachable");
                    return;
                };
                let _ = up.set_nodelay(true);
                stats.upstream_connections.inc();
                splice(down, up, &first, &[]).await;
            }
        })
    };
    Ok(Gateway {
        addr,
        stats,
        tasks: vec![task],
        kill,
        draining: Arc::new(AtomicBool::new(false)),
        quic: None,
        dialer: None,
    })
}

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("binding: {0}")]
    Bind(#[from] std::io::Error),
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    #[error("tunnel: {0}")]
    Tunnel(#[from] TunnelError),
}
