//! Ambiguous or oversized HTTP/1.1 from the app never reaches an upstream as something else
//! (request smuggling, H5–H7 and H2–H3 of the security plan): each gets a 4xx and the
//! connection is closed — or, for `Content-Length` beside `Transfer-Encoding`, one unambiguous
//! message (chunked wins, as RFC 9112 says) and the connection closed, so nothing pipelined
//! behind it is read as a second request.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::*;
use meshfed_trust::verify::Expect;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends raw bytes; returns everything read until the connection closes (or 10 s pass).
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_and_oversized_headers_are_refused() {
    let ca = alpha_ca();
    let (srv, _e) = echo_server(&ca, echo_config("echo-1"), Expect::AnyKnownDomain, vec![]).await;
    let cli = client(&ca, UI, vec![endpoint_of(&srv)]).await;
    let out = cli.outbound.unwrap();
    let h = format!("Host: {HOST}\r\n");
    let big = "a".repeat(512 * 1024);
    let cases: Vec<(&str, String)> = vec![
        (
            "CL and TE together",
            format!(
                "POST / HTTP/1.1\r\n{h}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n{h}\r\n"
            ),
        ),
        (
            "TE twice",
            format!(
                "POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "TE chunked, identity",
            format!("POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
        ),
        (
            "CL with a sign",
            format!("POST / HTTP/1.1\r\n{h}Content-Length: +5\r\n\r\nhello"),
        ),
        (
            "CL listed twice, differing",
            format!("POST / HTTP/1.1\r\n{h}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        ),
        (
            "chunk size overflow",
            format!(
                "POST / HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n"
            ),
        ),
        (
            "NUL in a header value",
            format!("GET / HTTP/1.1\r\n{h}X-A: a\0b\r\n\r\n"),
        ),
        (
            "space in a header name",
            format!("GET / HTTP/1.1\r\n{h}X A: b\r\n\r\n"),
        ),
        (
            "obs-fold",
            format!("GET / HTTP/1.1\r\n{h}X-A: a\r\n b\r\n\r\n"),
        ),
        (
            "512 KiB header",
            format!("GET / HTTP/1.1\r\n{h}X-Big: {big}\r\n\r\n"),
        ),
    ];
    // CL beside TE, and TE chunked twice: one unambiguous message — the body read as chunked
    // (empty here) and re-framed upstream — and for CL beside TE the connection closed before
    // the pipelined request, which never reaches the app.
    for (name, req) in &cases[..2] {
        let resp = raw(out, req.as_bytes()).await;
        assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "{name}: {resp}");
        assert!(resp.contains("\"received\":0"), "{name}: {resp}");
        assert!(!resp.contains("/smuggled"), "{name}: {resp}");
    }
    let resp = raw(out, cases[0].1.as_bytes()).await;
    assert!(
        resp.to_ascii_lowercase().contains("connection: close"),
        "{resp}"
    );
    for (name, req) in &cases[2..] {
        let resp = raw(out, req.as_bytes()).await;
        let status: u16 = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        // 4xx, or closed without an answer; never a 2xx from the app.
        assert!(
            status == 0 || (400..500).contains(&status),
            "{name}: {resp}"
        );
        assert!(
            !resp.contains("\"instance\""),
            "{name} reached the app: {resp}"
        );
    }
    // The listener still serves a well-formed request afterwards.
    let (status, body) = get(out, HOST, "").await;
    assert_eq!(status, 200, "{body}");
}

/// An app that keeps the head of the one request it is sent and answers `ok`.
async fn capturing_app() -> (std::net::SocketAddr, tokio::sync::oneshot::Receiver<String>) {
    let listener = tokio::net::TcpListener::bind(any()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            .await;
    });
    (addr, rx)
}

/// From the security review: a client-sent `x-forwarded-client-cert` reached the app untouched
/// (apps ported from Istio trust it), two `Host` headers were forwarded instead of refused,
/// and a broken request body got 502 where 400 is documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_client_certs_are_removed_and_two_hosts_or_a_broken_body_get_400() {
    let ca = alpha_ca();
    let (app, head) = capturing_app().await;
    let srv = meshfed_proxy::sidecar::start(server_config(app), resolver(&ca, ECHO), bundles(&ca))
        .await
        .unwrap();
    let cli = client(&ca, UI, vec![endpoint_of(&srv)]).await;
    let out = cli.outbound.unwrap();
    let resp = raw(
        out,
        format!(
            "GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Forwarded-Client-Cert: By=spiffe://alpha.local/ns/shop/sa/echo;URI=spiffe://alpha.local/ns/web/sa/admin\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let head = tokio::time::timeout(Duration::from_secs(10), head)
        .await
        .unwrap()
        .unwrap()
        .to_ascii_lowercase();
    assert!(!head.contains("x-forwarded-client-cert"), "{head}");
    assert!(
        head.contains("x-meshfed-client-id: spiffe://alpha.local/ns/web/sa/ui"),
        "{head}"
    );
    // Two Host headers: which one routes is ambiguous, so neither does.
    let resp = raw(
        out,
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nHost: other.example\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("DuplicateHost"), "{resp}");
    // A chunked body whose chunk size is not hex.
    let resp = raw(
        out,
        format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")
            .as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
}
