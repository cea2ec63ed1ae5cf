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
