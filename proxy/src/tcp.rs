//! TCP service ports: the app connects to a local listener per forwarded service port; the
//! sidecar carries the stream over mTLS to an endpoint's inbound listener, naming the port in
//! ALPN (`meshfed-tcp/<port>`), and the receiving sidecar splices it to the app's address on
//! that port after authorization by identity (see [`authz::decide_tcp`]). A port the receiving
//! workload does not serve matches no ALPN protocol, so the handshake itself fails.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use meshfed_core::authz::{self, Policy};
use meshfed_core::{Hostname, SpiffeId};
use meshfed_trust::verify::{SharedBundles, SvidResolver};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::{Direction, Stats};
use crate::sidecar::{CONNECT_TIMEOUT, Endpoint};

/// ALPN name prefix of a TCP stream between sidecars.
pub const ALPN_PREFIX: &str = "meshfed-tcp/";

/// Endpoints tried per stream before giving up.
const MAX_TRIES: usize = 3;

/// The ALPN name for `port`.
pub fn alpn(port: u16) -> Vec<u8> {
    format!("{ALPN_PREFIX}{port}").into_bytes()
}

/// The port an ALPN name carries, if it is a TCP stream's.
pub fn port_of(alpn: &[u8]) -> Option<u16> {
    std::str::from_utf8(alpn)
        .ok()?
        .strip_prefix(ALPN_PREFIX)?
        .parse()
        .ok()
}

/// A local listener for one service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpForward {
    /// Where the app connects (plaintext, loopback).
    pub listen: SocketAddr,
    pub host: Hostname,
    pub port: u16,
    pub endpoints: Vec<Endpoint>,
}

/// A forward, ready to carry streams.
#[derive(Debug)]
pub(crate) struct TcpRoute {
    pub(crate) fwd: TcpForward,
    tls: Arc<rustls::ClientConfig>,
    next: AtomicUsize,
}

impl TcpRoute {
    pub(crate) fn new(
        fwd: &TcpForward,
        svid: &Arc<SvidResolver>,
        bundles: &SharedBundles,
    ) -> Result<Self, rustls::Error> {
        let tls = crate::sidecar::upstream_tls(svid, bundles, &fwd.endpoints, alpn(fwd.port))?;
        Ok(Self {
            fwd: fwd.clone(),
            tls: Arc::new(tls),
            next: AtomicUsize::new(0),
        })
    }
}

/// The routes the TCP listeners look up on every connection (swapped on update).
pub(crate) type Routes = Arc<std::sync::RwLock<Arc<Vec<Arc<TcpRoute>>>>>;

fn route_for(routes: &Routes, listen: SocketAddr) -> Option<Arc<TcpRoute>> {
    let all = routes
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    all.iter().find(|r| r.fwd.listen == listen).cloned()
}

/// Accepts app connections on `listener` (bound for `listen`) and forwards each.
pub(crate) fn serve_outbound(
    listener: TcpListener,
    listen: SocketAddr,
    routes: Routes,
    stats: Arc<Stats>,
) -> tokio::task::JoinHandle<()> {
    crate::accept::accept_each(listener, move |app, _| {
        let route = route_for(&routes, listen);
        let stats = stats.clone();
        async move {
            let Some(route) = route else { return };
            let result = forward(app, &route, &stats).await;
            stats.tcp(Direction::Outbound, result);
        }
    })
}

/// Connects to an endpoint (the next in round robin, then the following ones on failure) and
/// splices the app's stream to it.
async fn forward(mut app: TcpStream, route: &TcpRoute, stats: &Stats) -> &'static str {
    let n = route.fwd.endpoints.len();
    if n == 0 {
        return "no_endpoint";
    }
    let first = route.next.fetch_add(1, Ordering::Relaxed);
    for k in 0..n.min(MAX_TRIES) {
        let ep = &route.fwd.endpoints[(first + k) % n];
        let connect = async {
            let tcp = TcpStream::connect(ep.addr).await.ok()?;
            let _ = tcp.set_nodelay(true);
            // The service's name (or the peer's exported name through a gateway): the server
            // sidecar answers only to names its service is known by.
            let sni = ep
                .sni
                .as_ref()
                .unwrap_or(&route.fwd.host)
                .as_str()
                .to_owned();
            let name = rustls_pki_types::ServerName::try_from(sni).ok()?;
            tokio_rustls::TlsConnector::from(route.tls.clone())
                .connect(name, tcp)
                .await
                .ok()
        };
        let Ok(Some(mut up)) = tokio::time::timeout(CONNECT_TIMEOUT, connect).await else {
            continue;
        };
        stats.handshake(Direction::Outbound, true);
        let _ = tokio::io::copy_bidirectional(&mut app, &mut up).await;
        return "forwarded";
    }
    "upstream_unavailable"
}

/// Carries an authenticated inbound stream for `port` to the app at `app_ip:port`, if the
/// policies allow `caller`.
pub(crate) async fn inbound<S>(
    mut stream: S,
    caller: &SpiffeId,
    port: u16,
    app_ip: std::net::IpAddr,
    policies: &[Policy],
    stats: &Stats,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if !authz::decide_tcp(policies, caller).allowed() {
        stats.denied.inc();
        stats.tcp(Direction::Inbound, "denied");
        return;
    }
    stats.allowed.inc();
    let Ok(Ok(mut app)) =
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((app_ip, port))).await
    else {
        stats.tcp(Direction::Inbound, "app_unavailable");
        return;
    };
    let _ = app.set_nodelay(true);
    stats.tcp(Direction::Inbound, "forwarded");
    let _ = tokio::io::copy_bidirectional(&mut stream, &mut app).await;
}
