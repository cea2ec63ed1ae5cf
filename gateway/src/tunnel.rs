//! The gateway-to-gateway tunnel, two transports behind one interface.
//!
//! - **TCP** + rustls: one TLS connection per carried stream.
//! - **QUIC** (quinn): one long-lived connection per peer ingress, one bidirectional stream per
//!   carried stream; 0-RTT is never used. The egress keeps the connection alive (1 s keep-alive,
//!   5 s idle timeout) and, when a connection turns out dead before the peer answered a stream
//!   — a restarted ingress answers with a stateless reset — reopens it once and replays the
//!   client's ClientHello, so a restart costs no new connection.
//!
//! Both authenticate with gateway SVIDs: the egress presents its own and checks the ingress's
//! SPIFFE ID; the ingress checks the egress's against the peer's `clientID`. Both negotiate the
//! ALPN [`ALPN_TUNNEL`]; a TCP connection with [`ALPN_PROBE`] is a health probe and carries
//! nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use meshfed_core::SpiffeId;
use meshfed_trust::verify::{self, Expect, SharedBundles, SpiffeServerVerifier, SvidResolver};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stats::Probe;

/// ALPN of a tunnel carrying one client stream.
pub const ALPN_TUNNEL: &[u8] = b"meshfed-tunnel/1";
/// ALPN of a TCP health probe (handshake only).
pub const ALPN_PROBE: &[u8] = b"meshfed-probe/1";
/// The name the egress puts in its tunnel ClientHello; identity is checked by SPIFFE ID.
const TUNNEL_SNI: &str = "ingress.meshfed.invalid";
/// QUIC stream error code: the ingress refused the stream (a counted denial).
pub const CODE_REFUSED: u32 = 1;
/// QUIC stream error code: the ingress is draining; the egress may retry on a new connection.
pub const CODE_DRAINING: u32 = 2;
const KEEP_ALIVE: Duration = Duration::from_secs(1);
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent streams one egress may open on a QUIC connection.
const MAX_STREAMS: u32 = 16_384;

/// Which tunnel the egress uses. The ingress always serves both on the same port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// TCP + rustls, one connection per stream.
    #[default]
    Tcp,
    /// QUIC, multiplexed streams over one long-lived connection.
    Quic,
}

/// A tunnel transport name that is neither `tcp` nor `quic`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tunnel transport {0:?}: use tcp or quic")]
pub struct UnknownTransport(pub String);

impl FromStr for Transport {
    type Err = UnknownTransport;
    fn from_str(s: &str) -> Result<Self, UnknownTransport> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Self::Tcp),
            "quic" => Ok(Self::Quic),
            other => Err(UnknownTransport(other.to_owned())),
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Quic => "quic",
        })
    }
}

/// A relayed byte stream.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}
pub type BoxStream = Box<dyn Stream>;

pub(crate) fn transport_config(client: bool) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(MAX_STREAMS.into());
    t.max_concurrent_uni_streams(0u32.into());
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    if client {
        t.keep_alive_interval(Some(KEEP_ALIVE));
    }
    t
}

/// The QUIC server side of an ingress, built from its TLS config (ALPN set here).
pub(crate) fn quic_server_config(
    mut tls: rustls::ServerConfig,
) -> Result<quinn::ServerConfig, TunnelError> {
    tls.alpn_protocols = vec![ALPN_TUNNEL.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TunnelError::Quic(e.to_string()))?;
    let mut c = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    c.transport_config(Arc::new(transport_config(false)));
    Ok(c)
}

/// With a key kept across restarts, a restarted ingress recognizes the connection IDs it issued
/// before (the IDs carry a keyed hash) and answers packets on them with a stateless reset, so
/// egresses learn at once that their connection is gone instead of waiting out the idle timeout.
pub(crate) fn endpoint_config(reset_key: Option<[u8; 32]>) -> quinn::EndpointConfig {
    let Some(k) = reset_key else {
        return quinn::EndpointConfig::default();
    };
    let mut c = quinn::EndpointConfig::new(Arc::new(aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        &k,
    )));
    // The connection-ID key: derived from the reset key, never equal to it.
    let tag = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &k),
        b"meshfed quic connection id key",
    );
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&tag.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    c.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    c
}

/// A new random stateless-reset key, for [`crate::relay::IngressOptions::reset_key`].
pub fn new_reset_key() -> Result<[u8; 32], TunnelError> {
    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key).map_err(|_| TunnelError::Quic("no randomness".into()))?;
    Ok(key)
}

/// Why a tunnel could not be opened; the strings are the counted refusal reasons.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    #[error("quic: {0}")]
    Quic(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Who a peer's ingress must be.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerIdentity {
    /// Exactly this SPIFFE ID (known when the peer's mesh file is at hand).
    Id(SpiffeId),
    /// Any SVID of the peer's trust domain, verified against that domain's bundle only (what
    /// peering tells us; the peer does not advertise its ingress's identity).
    Domain(meshfed_core::TrustDomain),
}

impl PeerIdentity {
    fn expect(&self) -> Expect {
        match self {
            Self::Id(id) => Expect::id(id.clone()),
            Self::Domain(td) => Expect::domain(td.clone()),
        }
    }
}

/// One peer ingress, as the egress dials it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub addr: SocketAddr,
    pub id: PeerIdentity,
}

/// What a tunnel TLS client config is for (each kind made once per peer identity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Use {
    /// A TCP tunnel carrying a stream.
    Tcp,
    /// A TCP health probe (its own ALPN).
    Probe,
    Quic,
}

/// A cached QUIC connection to one ingress; the async lock makes concurrent first streams share
/// one handshake instead of each dialing.
#[derive(Debug, Default)]
struct QuicSlot(tokio::sync::Mutex<Option<quinn::Connection>>);

/// The egress side of the tunnel: opens streams to peer ingresses and probes them.
#[derive(Debug)]
pub struct Dialer {
    transport: Transport,
    svid: Arc<SvidResolver>,
    bundles: SharedBundles,
    /// TLS client configs per ingress identity (TCP and QUIC), made on first use.
    tls: Mutex<BTreeMap<(PeerIdentity, Use), Arc<rustls::ClientConfig>>>,
    quic: Mutex<BTreeMap<Target, Arc<QuicSlot>>>,
    endpoint: Option<quinn::Endpoint>,
}

/// What [`Dialer::open`] hands back: the tunnel stream, and bytes the peer already sent (QUIC
/// waits for the first answer before committing to a connection).
pub type Opened = (BoxStream, Vec<u8>);

impl Dialer {
    /// A dialer for `transport`; QUIC binds its UDP socket on `local_ip`.
    pub fn new(
        transport: Transport,
        local_ip: std::net::IpAddr,
        svid: Arc<SvidResolver>,
        bundles: SharedBundles,
    ) -> Result<Self, TunnelError> {
        let endpoint = match transport {
            Transport::Tcp => None,
            Transport::Quic => Some(quinn::Endpoint::client(SocketAddr::new(local_ip, 0))?),
        };
        Ok(Self {
            transport,
            svid,
            bundles,
            tls: Mutex::new(BTreeMap::new()),
            quic: Mutex::new(BTreeMap::new()),
            endpoint,
        })
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    fn tls(&self, id: &PeerIdentity, used: Use) -> Result<Arc<rustls::ClientConfig>, TunnelError> {
        let mut all = self.tls.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = all.get(&(id.clone(), used)) {
            return Ok(c.clone());
        }
        let provider = verify::provider();
        let verifier =
            SpiffeServerVerifier::new(self.bundles.clone(), id.expect(), provider.clone());
        let mut c = verify::client_config(self.svid.clone(), Arc::new(verifier), provider)?;
        c.alpn_protocols = vec![match used {
            Use::Probe => ALPN_PROBE.to_vec(),
            Use::Tcp | Use::Quic => ALPN_TUNNEL.to_vec(),
        }];
        if used == Use::Quic {
            c.enable_early_data = false;
        }
        let c = Arc::new(c);
        all.insert((id.clone(), used), c.clone());
        Ok(c)
    }

    async fn tcp_tls(
        &self,
        target: &Target,
        used: Use,
    ) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Duration), &'static str> {
        let cfg = self.tls(&target.id, used).map_err(|_| "TunnelConfig")?;
        let t0 = Instant::now();
        let tcp = tokio::time::timeout(crate::relay::STEP_TIMEOUT, TcpStream::connect(target.addr))
            .await
            .map_err(|_| "PeerUnreachable")?
            .map_err(|_| "PeerUnreachable")?;
        let connect = t0.elapsed();
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(TUNNEL_SNI).map_err(|_| "TunnelConfig")?;
        tokio::time::timeout(
            crate::relay::STEP_TIMEOUT,
            tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
        )
        .await
        .map_err(|_| "PeerUnreachable")?
        .map(|s| (s, connect))
        .map_err(|_| "TunnelHandshakeFailed")
    }

    /// The live QUIC connection to `target`, dialing one if there is none. `stale` names a
    /// connection found dead, which is replaced rather than returned.
    async fn quic_conn(
        &self,
        target: &Target,
        stale: Option<usize>,
    ) -> Result<quinn::Connection, &'static str> {
        let slot = self
            .quic
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(target.clone())
            .or_default()
            .clone();
        let mut held = slot.0.lock().await;
        if let Some(c) = held.as_ref()
            && c.close_reason().is_none()
            && Some(c.stable_id()) != stale
        {
            return Ok(c.clone());
        }
        *held = None;
        let endpoint = self.endpoint.as_ref().ok_or("TunnelConfig")?;
        let tls = self
            .tls(&target.id, Use::Quic)
            .map_err(|_| "TunnelConfig")?;
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|_| "TunnelConfig")?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
        cfg.transport_config(Arc::new(transport_config(true)));
        let connecting = endpoint
            .connect_with(cfg, target.addr, TUNNEL_SNI)
            .map_err(|_| "TunnelConfig")?;
        let conn = tokio::time::timeout(crate::relay::STEP_TIMEOUT, connecting)
            .await
            .map_err(|_| "PeerUnreachable")?
            .map_err(|e| match e {
                quinn::ConnectionError::TransportError(_)
                | quinn::ConnectionError::ConnectionClosed(_) => "TunnelHandshakeFailed",
                _ => "PeerUnreachable",
            })?;
        *held = Some(conn.clone());
        Ok(conn)
    }

    /// Opens a tunnel stream to `target` and sends `first` (the client's ClientHello) on it.
    /// The `&'static str` error is the counted refusal reason.
    pub async fn open(&self, target: &Target, first: &[u8]) -> Result<Opened, &'static str> {
        match self.transport {
            Transport::Tcp => {
                let (mut s, _) = self.tcp_tls(target, Use::Tcp).await?;
                s.write_all(first).await.map_err(|_| "PeerUnreachable")?;
                Ok((Box::new(s), Vec::new()))
            }
            Transport::Quic => self.open_quic(target, first).await,
        }
    }

    async fn open_quic(&self, target: &Target, first: &[u8]) -> Result<Opened, &'static str> {
        let mut stale = None;
        for _ in 0..2 {
            let conn = self.quic_conn(target, stale).await?;
            stale = Some(conn.stable_id());
            let Ok((mut send, mut recv)) = conn.open_bi().await else {
                continue;
            };
            if send.write_all(first).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; 16 * 1024];
            match tokio::time::timeout(crate::relay::STEP_TIMEOUT, recv.read(&mut buf)).await {
                Err(_) => return Err("PeerTimeout"),
                Ok(Ok(Some(n))) => {
                    buf.truncate(n);
                    return Ok((Box::new(tokio::io::join(recv, send)), buf));
                }
                Ok(Ok(None)) => return Err("RefusedByPeer"),
                Ok(Err(quinn::ReadError::Reset(code)))
                    if code == quinn::VarInt::from_u32(CODE_DRAINING) =>
                {
                    continue;
                }
                Ok(Err(quinn::ReadError::Reset(_))) => return Err("RefusedByPeer"),
                Ok(Err(_)) => continue,
            }
        }
        Err("PeerUnreachable")
    }

    /// Probes `target`: QUIC reads the live connection's RTT estimate (dialing if needed); TCP
    /// times the connect and completes an authenticated handshake that carries nothing.
    pub async fn probe(&self, target: &Target) -> Probe {
        let at = SystemTime::now();
        let result: Result<Duration, &'static str> = match self.transport {
            Transport::Quic => self.quic_conn(target, None).await.map(|c| c.rtt()),
            Transport::Tcp => self.tcp_tls(target, Use::Probe).await.map(|(mut s, rtt)| {
                tokio::spawn(async move {
                    let _ = s.shutdown().await;
                });
                rtt
            }),
        };
        match result {
            Ok(rtt) => Probe {
                at,
                rtt: Some(rtt),
                error: None,
            },
            Err(e) => Probe {
                at,
                rtt: None,
                error: Some(e.to_owned()),
            },
        }
    }

    /// Closes QUIC connections (on shutdown).
    pub fn close(&self) {
        if let Some(e) = &self.endpoint {
            e.close(0u32.into(), b"egress stopped");
        }
    }
}
