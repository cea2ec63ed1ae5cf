//! Slow clients cannot hold a sidecar's connections: headers dribbled byte by byte, or a
//! keep-alive connection left idle, are closed after `HEADER_READ_TIMEOUT` on both the
//! outbound (plaintext) and inbound (mTLS) listeners.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::*;
use meshfed_proxy::sidecar::HEADER_READ_TIMEOUT;
use meshfed_trust::verify::Expect;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reads until the peer closes; how long that took from `t0`.
async fn closed_after<S: tokio::io::AsyncRead + Unpin>(s: &mut S, t0: Instant) -> Duration {
    let mut buf = [0u8; 4096];
    let limit = HEADER_READ_TIMEOUT * 3;
    loop {
        match tokio::time::timeout(limit, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return t0.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the connection was still open after {limit:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dribbled_headers_and_idle_connections_are_closed() {
    let ca = alpha_ca();
    let (srv, _e) = echo_server(&ca, echo_config("echo-1"), Expect::AnyKnownDomain, vec![]).await;
    let cli = client(&ca, UI, vec![endpoint_of(&srv)]).await;
    let out = cli.outbound.unwrap();
    // A request line and then nothing more.
    let dribble = async {
        let mut s = tokio::net::TcpStream::connect(out).await.unwrap();
        let t0 = Instant::now();
        s.write_all(b"GET / HTTP/1.1\r\nHost: ").await.unwrap();
        closed_after(&mut s, t0).await
    };
    // One full exchange, then silence on a keep-alive connection.
    let idle = async {
        let mut s = tokio::net::TcpStream::connect(out).await.unwrap();
        let req = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        let t0 = Instant::now();
        closed_after(&mut s, t0).await
    };
    // The same on the inbound listener, inside mTLS.
    let inbound = async {
        let provider = meshfed_trust::verify::provider();
        let tls = meshfed_trust::verify::client_config(
            resolver(&ca, UI),
            std::sync::Arc::new(meshfed_trust::SpiffeServerVerifier::new(
                bundles(&ca),
                Expect::AnyKnownDomain,
                provider.clone(),
            )),
            provider,
        )
        .unwrap();
        let tcp = tokio::net::TcpStream::connect(srv.inbound.unwrap())
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("echo").unwrap();
        let mut s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
            .connect(name, tcp)
            .await
            .unwrap();
        let t0 = Instant::now();
        s.write_all(b"GET / HTTP/1.1\r\nHost: ").await.unwrap();
        closed_after(&mut s, t0).await
    };
    let (d, i, t) = tokio::join!(dribble, idle, inbound);
    for took in [d, i, t] {
        assert!(
            took >= HEADER_READ_TIMEOUT - Duration::from_millis(100),
            "closed early: {took:?}"
        );
    }
}

/// From the security review: a stalled request body and an unused HTTP/2 connection held a
/// sidecar's connection for as long as the caller liked (still open after 75 s). Any HTTP
/// connection silent for the idle limit is now closed (here 1 s; 5 minutes by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_and_an_idle_http2_connection_are_closed_when_silent() {
    let ca = alpha_ca();
    let (srv, _e) = echo_server(&ca, echo_config("echo-1"), Expect::AnyKnownDomain, vec![]).await;
    let limit = Duration::from_secs(1);
    let cfg = meshfed_proxy::sidecar::SidecarConfig {
        idle_timeout: limit,
        ..client_config(vec![endpoint_of(&srv)], Default::default())
    };
    let cli = meshfed_proxy::sidecar::start(cfg, resolver(&ca, UI), bundles(&ca))
        .await
        .unwrap();
    let out = cli.outbound.unwrap();
    let stalled = async {
        let mut s = tokio::net::TcpStream::connect(out).await.unwrap();
        let t0 = Instant::now();
        s.write_all(
            format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1000\r\n\r\nabc")
                .as_bytes(),
        )
        .await
        .unwrap();
        closed_after(&mut s, t0).await
    };
    // The HTTP/2 preface and an empty SETTINGS frame, then nothing.
    let idle_h2 = async {
        let mut s = tokio::net::TcpStream::connect(out).await.unwrap();
        let t0 = Instant::now();
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        closed_after(&mut s, t0).await
    };
    let (a, b) = tokio::join!(stalled, idle_h2);
    for took in [a, b] {
        assert!(took >= limit, "{took:?}");
        assert!(took < limit * 8, "{took:?}");
    }
    // A request that keeps moving is not cut.
    let (status, body) = get(out, HOST, "").await;
    assert_eq!(status, 200, "{body}");
}
