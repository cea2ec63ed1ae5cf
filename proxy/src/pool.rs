//! Upstream connections kept for reuse, one pool per endpoint (and one for the local app): a
//! reused connection saves the TCP and mTLS handshakes. HTTP/1.1 connections carry one exchange
//! at a time and wait idle in a list; an HTTP/2 connection multiplexes, so one is shared by
//! every request to the endpoint until it closes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::http::Body;

/// Idle connections older than this are closed rather than reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle HTTP/1.1 connections kept per pool; more are closed.
pub const MAX_IDLE: usize = 64;

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// The request never left: it is handed back to be sent elsewhere.
    NotSent(Box<Request<Body>>, hyper::Error),
    /// It may have left; the exchange broke.
    Broken(hyper::Error),
}

/// The HTTP version spoken on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    #[default]
    Http1,
    Http2,
}

/// A connection's request sender.
#[derive(Debug)]
pub enum Conn {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

/// The reusable connections to one destination.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<Vec<(Instant, http1::SendRequest<Body>)>>,
    shared: Mutex<Option<http2::SendRequest<Body>>>,
    /// Held while an HTTP/2 connection is being made, so concurrent first requests wait for
    /// it instead of each opening their own.
    connecting: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Pool {
    /// The shared HTTP/2 connection, or the most recently used idle HTTP/1.1 one, if any is
    /// still open.
    pub fn take(&self) -> Option<Conn> {
        {
            let mut shared = lock(&self.shared);
            match shared.as_ref() {
                Some(s) if !s.is_closed() => return Some(Conn::H2(s.clone())),
                Some(_) => *shared = None,
                None => {}
            }
        }
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        while let Some((since, s)) = idle.pop() {
            if now.duration_since(since) < IDLE_TIMEOUT && s.is_ready() && !s.is_closed() {
                return Some(Conn::H1(s));
            }
        }
        None
    }

    /// For HTTP/2 while no shared connection is open: waits until no other task is
    /// connecting, and holds the gate while this one does (see [`Pool::share`]).
    pub async fn gate(&self, version: Version) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        if version != Version::Http2 || lock(&self.shared).as_ref().is_some_and(|s| !s.is_closed())
        {
            return None;
        }
        Some(self.connecting.lock().await)
    }

    /// Shares a new HTTP/2 connection at once (before its first exchange), so requests
    /// waiting at the gate use it.
    pub fn share(&self, c: &Conn) {
        if let Conn::H2(s) = c {
            let mut shared = lock(&self.shared);
            if shared.as_ref().is_none_or(http2::SendRequest::is_closed) {
                *shared = Some(s.clone());
            }
        }
    }

    /// Keeps a connection: an HTTP/1.1 one once its current exchange is complete (the
    /// response body read to its end), an HTTP/2 one at once, as the shared connection.
    pub fn put_when_ready(self: &Arc<Self>, c: Conn) {
        match c {
            Conn::H2(s) => {
                let mut shared = lock(&self.shared);
                if shared.as_ref().is_none_or(http2::SendRequest::is_closed) {
                    *shared = Some(s);
                }
            }
            Conn::H1(mut s) => {
                let pool = self.clone();
                tokio::spawn(async move {
                    if let Ok(Ok(())) = tokio::time::timeout(IDLE_TIMEOUT, s.ready()).await {
                        let mut idle = lock(&pool.idle);
                        if idle.len() < MAX_IDLE {
                            idle.push((Instant::now(), s));
                        }
                    }
                });
            }
        }
    }
}

/// Starts HTTP/1.1 or HTTP/2 (prior knowledge, or as negotiated by ALPN) over a connected
/// stream.
pub async fn handshake<S>(io: S, version: Version) -> Result<Conn, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    Ok(match version {
        Version::Http1 => {
            let (sender, conn) = http1::handshake(TokioIo::new(io)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Conn::H1(sender)
        }
        Version::Http2 => {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Conn::H2(sender)
        }
    })
}

/// Sends `req` on `c`, telling a request that never left from one that may have.
pub async fn send(c: &mut Conn, req: Request<Body>) -> Result<Response<Incoming>, SendError> {
    let sent = match c {
        Conn::H1(s) => s.try_send_request(req).await,
        Conn::H2(s) => {
            if let Err(e) = s.ready().await {
                return Err(SendError::NotSent(Box::new(req), e));
            }
            s.try_send_request(req).await
        }
    };
    sent.map_err(|mut e| match e.take_message() {
        Some(req) => SendError::NotSent(Box::new(req), e.into_error()),
        None => SendError::Broken(e.into_error()),
    })
}
