//! Upstream connections kept for reuse, one pool per endpoint (and one for the local app): a
//! reused connection saves the TCP and mTLS handshakes. HTTP/1.1 connections carry one exchange
//! at a time and wait idle in a list (joining it when a response body has been read to its
//! end and the request body was sent whole — a caller still sending keeps it busy, so it is
//! never handed to the next request); an HTTP/2 connection multiplexes, so one is shared by every request to the endpoint
//! until it closes.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;

use http_body_util::BodyExt;
use hyper::body::{Body as _, Bytes, Frame, Incoming, SizeHint};
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
    H1(H1),
    H2(http2::SendRequest<Body>),
}

/// An HTTP/1.1 connection's sender, and whether the last request's body was sent whole.
#[derive(Debug)]
pub struct H1 {
    sender: http1::SendRequest<Body>,
    body_sent: Arc<AtomicBool>,
}

impl H1 {
    fn new(sender: http1::SendRequest<Body>) -> Self {
        Self {
            sender,
            body_sent: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Ready for another request: open, and the last request's body sent to its end.
    fn reusable(&self) -> bool {
        !self.sender.is_closed() && self.body_sent.load(Ordering::Acquire)
    }
}

/// The reusable connections to one destination.
#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<Vec<(Instant, H1)>>,
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
    /// still open at `now` (the request's start will do). An idle one may not be ready for a
    /// request yet (its connection task has not seen the end of the last exchange): [`send`]
    /// waits for that.
    pub fn take(&self, now: Instant) -> Option<Conn> {
        {
            let mut shared = lock(&self.shared);
            match shared.as_ref() {
                Some(s) if !s.is_closed() => return Some(Conn::H2(s.clone())),
                Some(_) => *shared = None,
                None => {}
            }
        }
        let mut idle = lock(&self.idle);
        while let Some((since, s)) = idle.pop() {
            if now.duration_since(since) < IDLE_TIMEOUT && s.reusable() {
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

    /// Keeps the connection `resp` came on and hands back the response: an HTTP/2 connection
    /// at once, as the shared one; an HTTP/1.1 one when its exchange is complete — the
    /// response body read to its end, which is when the next request may go on it. A body
    /// dropped early or broken closes its connection with it.
    pub fn keep(self: &Arc<Self>, c: Conn, resp: Response<Incoming>) -> Response<Body> {
        match c {
            Conn::H2(s) => {
                let mut shared = lock(&self.shared);
                if shared.as_ref().is_none_or(http2::SendRequest::is_closed) {
                    *shared = Some(s);
                }
                drop(shared);
                resp.map(BodyExt::boxed)
            }
            Conn::H1(s) if resp.body().is_end_stream() => {
                self.idle(s);
                resp.map(BodyExt::boxed)
            }
            Conn::H1(s) => resp.map(|body| {
                Returning {
                    body,
                    back: Some((self.clone(), s)),
                }
                .boxed()
            }),
        }
    }

    /// An HTTP/1.1 connection whose exchange is complete joins the idle list; one whose
    /// request body is still being sent (a stalled caller) is left to finish and close.
    fn idle(&self, s: H1) {
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE && s.reusable() {
            idle.push((Instant::now(), s));
        }
    }
}

/// A response body from an HTTP/1.1 connection that goes back to its pool once the body has
/// been read to its end. Returning it there, rather than in a task waiting for the connection
/// to be ready, saves a task and a timer per request.
struct Returning {
    body: Incoming,
    back: Option<(Arc<Pool>, H1)>,
}

impl hyper::body::Body for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.release(),
            // A broken exchange leaves the connection in no state to reuse.
            Poll::Ready(Some(Err(_))) => this.back = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Returning {
    fn release(&mut self) {
        if let Some((pool, s)) = self.back.take() {
            pool.idle(s);
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
            Conn::H1(H1::new(sender))
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
    let ready = match c {
        Conn::H1(s) => s.sender.ready().await,
        Conn::H2(s) => s.ready().await,
    };
    if let Err(e) = ready {
        return Err(SendError::NotSent(Box::new(req), e));
    }
    let sent = match c {
        Conn::H1(s) => {
            let req = track_body(req, &s.body_sent);
            s.sender.try_send_request(req).await
        }
        Conn::H2(s) => s.try_send_request(req).await,
    };
    sent.map_err(|mut e| match e.take_message() {
        Some(req) => SendError::NotSent(Box::new(req), e.into_error()),
        None => SendError::Broken(e.into_error()),
    })
}

/// Marks `sent` false until `req`'s body has been read to its end (by the connection sending
/// it); a body that is already complete changes nothing.
fn track_body(req: Request<Body>, sent: &Arc<AtomicBool>) -> Request<Body> {
    if req.body().is_end_stream() {
        sent.store(true, Ordering::Release);
        return req;
    }
    sent.store(false, Ordering::Release);
    let sent = sent.clone();
    req.map(|body| Tracked { body, sent }.boxed())
}

/// A request body that says when it has been sent whole.
struct Tracked {
    body: Body,
    sent: Arc<AtomicBool>,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = <Body as hyper::body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        let done = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.body.is_end_stream(),
            _ => false,
        };
        if done {
            self.sent.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
