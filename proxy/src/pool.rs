//! Idle HTTP/1.1 connections kept for reuse, one pool per upstream endpoint (and one for the
//! local app): a reused connection saves the TCP and mTLS handshakes on every request.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::http::Body;

/// Idle connections older than this are closed rather than reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per pool; more are closed.
pub const MAX_IDLE: usize = 64;

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// The request never left: it is handed back to be sent elsewhere.
    NotSent(Box<Request<Body>>, hyper::Error),
    /// It may have left; the exchange broke.
    Broken(hyper::Error),
}

/// The idle connections to one destination.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<Vec<(Instant, SendRequest<Body>)>>,
}

impl Pool {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, SendRequest<Body>)>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recently used idle connection that is still open, if any.
    pub fn take(&self) -> Option<SendRequest<Body>> {
        let now = Instant::now();
        let mut idle = self.idle();
        while let Some((since, s)) = idle.pop() {
            if now.duration_since(since) < IDLE_TIMEOUT && s.is_ready() && !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    /// Keeps `s` once its current exchange is complete (the response body read to its end).
    pub fn put_when_ready(self: &Arc<Self>, mut s: SendRequest<Body>) {
        let pool = self.clone();
        tokio::spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(IDLE_TIMEOUT, s.ready()).await {
                let mut idle = pool.idle();
                if idle.len() < MAX_IDLE {
                    idle.push((Instant::now(), s));
                }
            }
        });
    }
}

/// Starts HTTP/1.1 over a connected stream.
pub async fn handshake<S>(io: S) -> Result<SendRequest<Body>, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends `req` on `s`, telling a request that never left from one that may have.
pub async fn send(
    s: &mut SendRequest<Body>,
    req: Request<Body>,
) -> Result<Response<Incoming>, SendError> {
    s.try_send_request(req)
        .await
        .map_err(|mut e| match e.take_message() {
            Some(req) => SendError::NotSent(Box::new(req), e.into_error()),
            None => SendError::Broken(e.into_error()),
        })
}
