//! The gateways' data path over TCP + rustls, one tunnel connection per client connection.
//!
//! Egress: a local sidecar connects in plaintext TCP and starts its own mTLS handshake with the
//! server sidecar; the egress reads the server name from that ClientHello (never terminating
//! it), finds the peer that exports the name, opens an mTLS connection to the peer's ingress
//! gateway with its own gateway SVID, and relays the sidecar's bytes inside it.
//!
//! Ingress: the peer's egress gateway must present the peer's `clientID`; inside that tunnel the
//! ingress reads the client sidecar's ClientHello and accepts it only if the name is exported to
//! *that* peer. Anything else — another peer's export, an unknown name, no or a malformed
//! ClientHello, one larger than 16 KiB — is refused before any upstream connection is opened,
//! counted by reason. An accepted stream is spliced to a local endpoint (round robin), so the
//! client and server sidecars complete mTLS end to end: the gateways never see plaintext and
//! hold no workload keys.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use meshfed_core::{Hostname, SpiffeId};
use meshfed_trust::verify::{
    self, Expect, SharedBundles, SpiffeClientVerifier, SpiffeServerVerifier, SvidResolver,
};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::sni::{self, ClientHello, MAX_PEEK, SniError};

/// Longest wait for a ClientHello, a tunnel handshake, or an upstream connection.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// The identity the peer's ingress must present.
    pub ingress_id: SpiffeId,
}

/// Counts for health, metrics and tests.
#[derive(Debug, Default)]
pub struct GatewayStats {
    pub accepted: AtomicU64,
    /// Connections being handled now.
    pub active: AtomicU64,
    /// Upstream connections opened (to local endpoints at an ingress, to peers at an egress).
    pub upstream_connections: AtomicU64,
    /// Refusals by (peer, reason); the peer is `-` when unknown.
    pub denials: Mutex<BTreeMap<(String, String), u64>>,
}

impl GatewayStats {
    fn deny(&self, peer: &str, reason: &str) {
        *self
            .denials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((peer.to_owned(), reason.to_owned()))
            .or_default() += 1;
    }

    /// The counts as JSON (the gateway's `/status`): accepted, active and upstream
    /// connections, and refusals by peer and reason.
    pub fn to_json(&self) -> serde_json::Value {
        let denials: Vec<serde_json::Value> = self
            .denials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|((peer, reason), n)| serde_json::json!({"peer": peer, "reason": reason, "count": n}))
            .collect();
        serde_json::json!({
            "accepted": self.accepted.load(Ordering::Relaxed),
            "active": self.active.load(Ordering::Relaxed),
            "upstreamConnections": self.upstream_connections.load(Ordering::Relaxed),
            "denials": denials,
        })
    }

    /// Refusals with `reason`, across peers.
    pub fn denied(&self, reason: &str) -> u64 {
        self.denials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|((_, r), _)| r == reason)
            .map(|(_, n)| n)
            .sum()
    }
}

/// A running gateway listener; stops when dropped.
#[derive(Debug)]
pub struct Gateway {
    pub addr: SocketAddr,
    pub stats: Arc<GatewayStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Gateway {
    /// Graceful drain: stops accepting (the listener closes, so new connections are refused
    /// and go elsewhere), then waits for the connections in flight to finish, at most
    /// `deadline`. Returns how many were still open when it gave up.
    pub async fn drain(self, deadline: Duration) -> u64 {
        self.task.abort();
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let open = self.stats.active.load(Ordering::Relaxed);
            if open == 0 || tokio::time::Instant::now() >= until {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Counts a connection as active for as long as its task holds it.
struct ActiveGuard(Arc<GatewayStats>);

impl ActiveGuard {
    fn new(stats: &Arc<GatewayStats>) -> Self {
        stats.active.fetch_add(1, Ordering::Relaxed);
        Self(stats.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads from `s` until a whole ClientHello is buffered; returns it and the bytes read.
async fn read_hello<S: AsyncRead + Unpin>(s: &mut S) -> Result<(ClientHello, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        loop {
            if let Some(h) = sni::parse(&buf).map_err(|e: SniError| e.reason().to_owned())? {
                return Ok(h);
            }
            if buf.len() >= MAX_PEEK {
                return Err("ClientHelloTooLarge".to_owned());
            }
            let mut chunk = [0u8; 4096];
            let want = chunk.len().min(MAX_PEEK - buf.len());
            let n = s
                .read(&mut chunk[..want])
                .await
                .map_err(|_| "ClientClosed".to_owned())?;
            if n == 0 {
                return Err("ClientClosed".to_owned());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let hello = tokio::time::timeout(STEP_TIMEOUT, read)
        .await
        .map_err(|_| "ClientHelloTimeout".to_owned())??;
    Ok((hello, buf))
}

/// Writes what was already read, then relays both ways until either side closes.
async fn splice<A, B>(mut down: A, mut up: B, first: &[u8])
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    if up.write_all(first).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
}

async fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind(addr).await?;
    let bound = l.local_addr()?;
    Ok((l, bound))
}

/// The ingress: peers' egress gateways in, local endpoints out.
pub async fn start_ingress(
    listen: SocketAddr,
    peers: Arc<RwLock<Arc<Vec<IngressPeer>>>>,
    svid: Arc<SvidResolver>,
    bundles: SharedBundles,
) -> Result<Gateway, GatewayError> {
    let provider = verify::provider();
    let ids = peers
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|p| p.client_id.clone())
        .collect();
    let verifier = SpiffeClientVerifier::new(bundles, Expect::Ids(ids), provider.clone());
    let tls = Arc::new(verify::server_config(svid, Arc::new(verifier), provider)?);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let (listener, addr) = bind(listen).await?;
    let stats = Arc::new(GatewayStats::default());
    let next = Arc::new(AtomicUsize::new(0));
    let task = {
        let stats = stats.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, peers, stats, next) =
                    (acceptor.clone(), peers.clone(), stats.clone(), next.clone());
                let active = ActiveGuard::new(&stats);
                tokio::spawn(async move {
                    let _active = active;
                    let Ok(Ok(mut tunnel)) =
                        tokio::time::timeout(STEP_TIMEOUT, acceptor.accept(tcp)).await
                    else {
                        stats.deny("-", "TunnelHandshakeFailed");
                        return;
                    };
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    let caller = tunnel
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| meshfed_trust::svid::spiffe_id_of(c).ok());
                    let peers = peers
                        .read()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone();
                    let Some(peer) = caller.and_then(|id| peers.iter().find(|p| p.client_id == id))
                    else {
                        stats.deny("-", "UnknownPeer");
                        return;
                    };
                    let (hello, first) = match read_hello(&mut tunnel).await {
                        Ok(x) => x,
                        Err(reason) => {
                            stats.deny(&peer.name, &reason);
                            return;
                        }
                    };
                    let Some(endpoints) = peer
                        .exports
                        .get(&hello.server_name)
                        .filter(|e| !e.is_empty())
                    else {
                        stats.deny(&peer.name, "NotExportedToPeer");
                        return;
                    };
                    let ep = endpoints[next.fetch_add(1, Ordering::Relaxed) % endpoints.len()];
                    let Ok(Ok(up)) =
                        tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(ep)).await
                    else {
                        stats.deny(&peer.name, "EndpointUnreachable");
                        return;
                    };
                    let _ = up.set_nodelay(true);
                    stats.upstream_connections.fetch_add(1, Ordering::Relaxed);
                    splice(tunnel, up, &first).await;
                });
            }
        })
    };
    Ok(Gateway { addr, stats, task })
}

/// The egress's tunnel TLS clients, one per peer ingress identity, made on first use (not per
/// connection).
#[derive(Default)]
struct Tunnels(Mutex<BTreeMap<SpiffeId, Arc<rustls::ClientConfig>>>);

impl Tunnels {
    fn get(
        &self,
        ingress_id: &SpiffeId,
        svid: &Arc<SvidResolver>,
        bundles: &SharedBundles,
    ) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        let mut all = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = all.get(ingress_id) {
            return Ok(c.clone());
        }
        let provider = verify::provider();
        let verifier = SpiffeServerVerifier::new(
            bundles.clone(),
            Expect::id(ingress_id.clone()),
            provider.clone(),
        );
        let c = Arc::new(verify::client_config(
            svid.clone(),
            Arc::new(verifier),
            provider,
        )?);
        all.insert(ingress_id.clone(), c.clone());
        Ok(c)
    }
}

/// The egress: local sidecars in, peers' ingress gateways out.
pub async fn start_egress(
    listen: SocketAddr,
    routes: Arc<RwLock<Arc<BTreeMap<Hostname, EgressRoute>>>>,
    svid: Arc<SvidResolver>,
    bundles: SharedBundles,
) -> Result<Gateway, GatewayError> {
    let (listener, addr) = bind(listen).await?;
    let stats = Arc::new(GatewayStats::default());
    let tunnels = Arc::new(Tunnels::default());
    let task = {
        let stats = stats.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let _ = down.set_nodelay(true);
                let (routes, stats, svid, bundles, tunnels) = (
                    routes.clone(),
                    stats.clone(),
                    svid.clone(),
                    bundles.clone(),
                    tunnels.clone(),
                );
                let active = ActiveGuard::new(&stats);
                tokio::spawn(async move {
                    let _active = active;
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    let (hello, first) = match read_hello(&mut down).await {
                        Ok(x) => x,
                        Err(reason) => {
                            stats.deny("-", &reason);
                            return;
                        }
                    };
                    let route = routes
                        .read()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .get(&hello.server_name)
                        .cloned();
                    let Some(route) = route else {
                        stats.deny("-", "NoPeerExportsName");
                        return;
                    };
                    let Ok(tls) = tunnels.get(&route.ingress_id, &svid, &bundles) else {
                        stats.deny(&route.peer, "TunnelConfig");
                        return;
                    };
                    let connect = async {
                        let tcp = TcpStream::connect(route.ingress).await.ok()?;
                        let _ = tcp.set_nodelay(true);
                        let name = ServerName::try_from("ingress.meshfed.invalid").ok()?;
                        tokio_rustls::TlsConnector::from(tls)
                            .connect(name, tcp)
                            .await
                            .ok()
                    };
                    let Ok(Some(tunnel)) = tokio::time::timeout(STEP_TIMEOUT, connect).await else {
                        stats.deny(&route.peer, "PeerUnreachable");
                        return;
                    };
                    stats.upstream_connections.fetch_add(1, Ordering::Relaxed);
                    splice(down, tunnel, &first).await;
                });
            }
        })
    };
    Ok(Gateway { addr, stats, task })
}

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("binding: {0}")]
    Bind(#[from] std::io::Error),
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
}
