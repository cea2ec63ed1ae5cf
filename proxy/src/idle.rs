//! Closing connections that have gone silent.
//!
//! A connection's I/O counts its progress ([`Counted`]); a watchdog beside the connection
//! ([`silent_for`]) ends it when nothing was read or written for a whole period. That bounds a
//! caller that stops sending in the middle of a request body, an HTTP/2 connection nobody
//! uses, and a response nobody reads — Envoy's `stream_idle_timeout` and `idle_timeout`, with
//! one limit — at the cost of one relaxed atomic add per read or write and one timer per
//! connection, not per request.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a sidecar's HTTP connection may stay silent — no byte read or written — before it
/// is closed (Envoy's `stream_idle_timeout` default).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// An I/O stream that counts the reads and writes that moved bytes.
#[derive(Debug)]
pub struct Counted<T> {
    inner: T,
    moved: Arc<AtomicU64>,
}

impl<T> Counted<T> {
    /// `inner`, and the counter a watchdog reads.
    pub fn new(inner: T) -> (Self, Arc<AtomicU64>) {
        let moved = Arc::new(AtomicU64::new(0));
        (
            Self {
                inner,
                moved: moved.clone(),
            },
            moved,
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.moved.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.moved.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Returns once `moved` has not changed for a whole `limit` (checked every `limit`, so after
/// between one and two periods of silence).
pub async fn silent_for(moved: &AtomicU64, limit: Duration) {
    let mut seen = moved.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(limit).await;
        let now = moved.load(Ordering::Relaxed);
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// Runs `conn` (a connection's serving future) until it ends, or until its I/O has been
/// silent for `limit`; then it is dropped, which closes the connection.
pub async fn until_silent<F: std::future::Future>(conn: F, moved: &AtomicU64, limit: Duration) {
    tokio::select! {
        _ = conn => {}
        () = silent_for(moved, limit) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn silence_is_noticed_after_one_to_two_periods_and_traffic_keeps_it_away() {
        let (a, mut b) = tokio::io::duplex(64);
        let (mut a, moved) = Counted::new(a);
        let limit = Duration::from_secs(60);
        let watch = tokio::spawn({
            let moved = moved.clone();
            async move {
                let t0 = tokio::time::Instant::now();
                silent_for(&moved, limit).await;
                t0.elapsed()
            }
        });
        // Traffic every 50 s for 5 minutes: never silent for a whole period.
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            a.write_all(b"x").await.unwrap_or_else(|e| panic!("{e}"));
            let mut one = [0u8; 1];
            b.read_exact(&mut one)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(!watch.is_finished(), "cut while busy");
        }
        let took = watch.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(took >= Duration::from_secs(300 + 60), "{took:?}");
        assert!(took <= Duration::from_secs(300 + 120), "{took:?}");
    }
}
