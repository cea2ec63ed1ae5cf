//! Connection reuse over HTTP/1.1, through both sidecars on loopback: a connection goes back
//! to its pool only once its response has been read to the end (by length or by the last
//! chunk), and a response the client abandons halfway takes its connections with it, so no
//! later request ever lands on a connection with a stale response still on it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use common::*;
use hyper::body::{Bytes, Frame, SizeHint};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use meshfed_proxy::sidecar;
use meshfed_trust::CertificateAuthority;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A body of `left` bytes in 64 KiB frames, made as it is read; `Content-Length` is given
/// when `sized`, else it goes chunked.
struct Generated {
    left: usize,
    sized: bool,
}

const FRAME: usize = 64 * 1024;

impl hyper::body::Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(FRAME);
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.sized && self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.sized {
            SizeHint::with_exact(self.left as u64)
        } else {
            SizeHint::default()
        }
    }
}

/// An HTTP/1.1 app: `/big` answers 256 MiB, `/sized/<n>` and `/chunked/<n>` answer `n` bytes
/// with a length or in chunks. Returns its address and the count of connections it accepted.
async fn app() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind(any()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let path = req.uri().path();
                    let n = |p: &str| path.strip_prefix(p).and_then(|n| n.parse().ok());
                    let body = match (n("/sized/"), n("/chunked/")) {
                        _ if path == "/big" => Generated {
                            left: 256 << 20,
                            sized: true,
                        },
                        (Some(left), _) => Generated { left, sized: true },
                        (_, Some(left)) => Generated { left, sized: false },
                        _ => Generated {
                            left: 0,
                            sized: true,
                        },
                    };
                    Ok::<_, Infallible>(Response::new(body))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// A client sidecar to a server sidecar in front of [`app`].
async fn sidecars(
    ca: &CertificateAuthority,
) -> (sidecar::Running, sidecar::Running, Arc<AtomicUsize>) {
    let (app, accepted) = app().await;
    let srv = sidecar::start(server_config(app), resolver(ca, ECHO), bundles(ca))
        .await
        .unwrap();
    let cli = client(ca, UI, vec![endpoint_of(&srv)]).await;
    (cli, srv, accepted)
}

fn handshakes(r: &sidecar::Running) -> u64 {
    metric(
        &r.stats.encode(),
        r#"meshfed_tls_handshakes_total{direction="outbound",result="ok"} "#,
    )
}

/// Asks for `n` bytes the way `path` says and checks that exactly those came back.
async fn check(addr: SocketAddr, path: &str, n: usize) {
    let (status, body) = request(addr, "GET", &format!("{path}{n}"), HOST, "").await;
    assert_eq!(status, 200, "{path}{n}: {body}");
    let xs = body.bytes().filter(|&b| b == b'x').count();
    assert_eq!(xs, n, "{path}{n}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_return_once_their_response_is_read_to_the_end() {
    let ca = alpha_ca();
    let (cli, _srv, accepted) = sidecars(&ca).await;
    let addr = cli.outbound.unwrap();
    // By length and by chunks, one after another: one connection on each hop carries all.
    for i in 0..10 {
        check(addr, "/sized/", 100 + i).await;
        check(addr, "/chunked/", 200 + i).await;
    }
    // Bodies larger than one read, too.
    check(addr, "/sized/", 300_000).await;
    check(addr, "/chunked/", 300_001).await;
    assert_eq!(handshakes(&cli), 1);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_response_takes_its_connections_with_it() {
    let ca = alpha_ca();
    let (cli, _srv, accepted) = sidecars(&ca).await;
    let addr = cli.outbound.unwrap();
    check(addr, "/sized/", 10).await;
    // A 256 MiB answer, read for its first 64 KiB, then the client goes.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET /big HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = 0;
    let mut buf = vec![0; FRAME];
    while got < FRAME {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the big answer ended after {got} bytes");
        got += n;
    }
    drop(s);
    // Every later request gets its own answer whole: the half-sent one's connections were
    // never pooled (each hop opened one more).
    for i in 0..10 {
        check(addr, "/sized/", 400 + i).await;
    }
    assert_eq!(handshakes(&cli), 2);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// The security review's "a stalled caller blocks the next one": the app answers before the
/// caller has sent its whole body, and the caller stalls. The connections its request went
/// on (client sidecar → server sidecar, server sidecar → app) are still busy sending that
/// body, so neither goes back to a pool: the next request is answered on connections of its
/// own instead of waiting behind the stalled one. (hyper also gives up such a connection; the
/// pool does not rely on it: a connection whose request body was not sent whole is never
/// pooled.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_still_sending_its_body_keeps_its_connections_from_the_next_request() {
    let ca = alpha_ca();
    let (cli, _srv, _accepted) = sidecars(&ca).await;
    let addr = cli.outbound.unwrap();
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(
            format!(
                "POST /sized/5 HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100000\r\n\r\nxxxxxxxxxx"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // Its answer comes whole (the app does not wait for the body) ...
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).ends_with("xxxxx") {
        let n = tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut buf))
            .await
            .expect("the stalled caller's answer")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
    // ... while it still owes 99,990 bytes. The next requests are answered at once.
    for i in 0..3 {
        tokio::time::timeout(Duration::from_secs(10), check(addr, "/sized/", 7 + i))
            .await
            .expect("a request waited on the stalled caller's connection");
    }
    // Each hop opened one more connection for them.
    assert_eq!(handshakes(&cli), 2);
    drop(stalled);
}
