//! mTLS for the peering stream, carrying meshfed's SPIFFE verifiers into tonic: a TLS accept
//! loop that hands tonic connections already authenticated (with the peer's verified SPIFFE ID
//! as connection info), and a connector for the dialing side.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use meshfed_core::SpiffeId;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most TLS handshakes in progress at once on one listener. A connection beyond them is
/// closed at once and reported (`TooManyHandshakes`): a flood of slow handshakes costs a
/// bounded number of tasks, and connections already up are not affected.
pub const MAX_HANDSHAKES: usize = 256;

/// How many handshake failures may wait for their reader; more are dropped (the reader only
/// counts and logs them).
pub const FAILURE_QUEUE: usize = 256;

/// Who is on the other end of an accepted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The SPIFFE ID from the peer's verified certificate; `None` for a client that sent no
    /// certificate (allowed only where the server's verifier permits anonymous clients).
    pub id: Option<SpiffeId>,
    pub remote: SocketAddr,
}

impl PeerInfo {
    /// The verified SPIFFE ID of whoever made `request`, if they presented a certificate.
    pub fn caller_of<T>(request: &tonic::Request<T>) -> Option<SpiffeId> {
        request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|i| i.id.clone())
    }
}

/// An authenticated server-side connection.
#[derive(Debug)]
pub struct PeerConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
}

impl tonic::transport::server::Connected for PeerConn {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A failed inbound handshake, for counting and status (peer name unknown at this point).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeFailure {
    pub remote: SocketAddr,
    /// meshfed reason token (e.g. `UnknownTrustDomain`, `IdentityNotAllowed`) or `Tls`.
    pub reason: String,
}

fn reason_of(e: &io::Error) -> String {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(r) => match meshfed_trust::VerifyError::from_rustls(r) {
            Some(v) => v.reason().to_owned(),
            None => format!("Tls: {r}"),
        },
        None => format!("Tls: {e}"),
    }
}

/// Accepts TCP connections, runs the TLS handshake (bounded in time) on each in its own task,
/// and yields authenticated connections. Accept errors (EMFILE…) back off and never end the
/// loop (tonic RUSTSEC-2024-0376); dropping the stream ends it and closes the listener.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    failures: mpsc::Sender<HandshakeFailure>,
) -> ReceiverStream<io::Result<PeerConn>> {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let (tx, rx) = mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(5);
        loop {
            // Ends (and releases the port) as soon as the server stops taking connections.
            let accepted = tokio::select! {
                () = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (tcp, remote) = match accepted {
                Ok(x) => {
                    backoff = Duration::from_millis(5);
                    x
                }
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    if tx.is_closed() {
                        return;
                    }
                    continue;
                }
            };
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                drop(tcp);
                let _ = failures.try_send(HandshakeFailure {
                    remote,
                    reason: "TooManyHandshakes".into(),
                });
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, failures) = (acceptor.clone(), tx.clone(), failures.clone());
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        let _ = failures.try_send(HandshakeFailure {
                            remote,
                            reason: reason_of(&e),
                        });
                        return;
                    }
                    Err(_) => {
                        let _ = failures.try_send(HandshakeFailure {
                            remote,
                            reason: "HandshakeTimeout".into(),
                        });
                        return;
                    }
                };
                // The handshake is over: the next connection may start its own.
                drop(permit);
                let id = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| meshfed_trust::svid::spiffe_id_of(c).ok());
                // A certificate, if any, was verified; no certificate means an anonymous client
                // (only where the verifier allows it), which may only redeem a token.
                let _ = tx
                    .send(Ok(PeerConn {
                        inner: tls,
                        info: PeerInfo { id, remote },
                    }))
                    .await;
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Dials `addr` over mTLS with `config` (whose verifier decides whom it accepts) and returns a
/// tonic channel on that one connection.
pub async fn connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<tonic::transport::Channel, ConnectError> {
    let connector = tower::service_fn(move |_uri: tonic::transport::Uri| {
        let config = config.clone();
        async move {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from("peering.meshfed.invalid").map_err(io::Error::other)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| ConnectError {
            reason: "BadAddress".into(),
            detail: e.to_string(),
        })?
        .connect_timeout(timeout)
        .timeout(Duration::from_secs(24 * 3600))
        .http2_keep_alive_interval(Duration::from_secs(30));
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| {
            let reason = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<io::Error>())
                .map_or_else(
                    || "GatewayUnreachable".to_owned(),
                    |io| match reason_of(io).as_str() {
                        r if r.starts_with("Tls") => match io.kind() {
                            io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::ConnectionReset => "GatewayUnreachable".to_owned(),
                            _ => "TlsHandshakeFailed".to_owned(),
                        },
                        r => r.to_owned(),
                    },
                );
            let mut detail = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                detail = format!("{detail}: {s}");
                source = s.source();
            }
            ConnectError { reason, detail }
        })
}

/// Why dialing a peer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct ConnectError {
    /// `GatewayUnreachable`, `TlsHandshakeFailed`, or a verifier reason.
    pub reason: String,
    pub detail: String,
}
