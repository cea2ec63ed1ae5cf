//! Hostile-input vectors for the sidecar's HTTP listeners, generated: every byte a header name,
//! a header value, a method or a target must not hold; every broken `Content-Length`,
//! `Transfer-Encoding` and chunk; and over HTTP/2 (prior knowledge, raw frames) every header
//! block RFC 9113 calls malformed. Each gets its specific refusal (the status, or the
//! HTTP/2 stream reset), none reaches the app, and the listener serves a good request after.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use meshfed_test_support::hostile::Tally;
use meshfed_trust::verify::Expect;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends raw bytes; answers the response's status code (`closed` when the connection closed
/// without one) and whether the app answered. Reads until the connection closes, or until a
/// response head came and nothing more for a moment (a refusal on a kept-alive connection).
async fn h1(addr: SocketAddr, bytes: &[u8]) -> (String, bool) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let head_seen = out.windows(4).any(|w| w == b"\r\n\r\n");
        let wait = if head_seen {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(20)
        };
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&out);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .unwrap_or("closed")
        .to_owned();
    (status, text.contains("\"instance\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http1_requests_get_their_status_and_never_reach_the_app() {
    let ca = alpha_ca();
    let (srv, _e) = echo_server(&ca, echo_config("echo-1"), Expect::AnyKnownDomain, vec![]).await;
    let cli = client(&ca, UI, vec![endpoint_of(&srv)]).await;
    let out = cli.outbound.unwrap();
    let host = format!("Host: {HOST}\r\n");
    let mut vectors: Vec<(String, Vec<u8>, &str)> = Vec::new();
    // Header names: every control byte, separator and non-ASCII byte (RFC 9110 §5.1 tokens).
    let separators = b"()/:;<=>?@[\\]{}\",";
    for b in (0u8..=0x20)
        .chain([0x7f])
        .chain(separators.iter().copied())
        .chain([0x80, 0xc3, 0xff])
    {
        if b == b':' || b == b'\r' || b == b'\n' {
            continue; // they end the name or the line: vectors of their own below
        }
        let mut req = format!("GET / HTTP/1.1\r\n{host}X-").into_bytes();
        req.push(b);
        req.extend_from_slice(b"A: v\r\n\r\n");
        vectors.push((format!("header name with byte {b:#04x}"), req, "400"));
    }
    // Header values: control bytes other than tab (RFC 9110 §5.5).
    for b in (0u8..0x20)
        .filter(|&b| b != b'\t' && b != b'\r' && b != b'\n')
        .chain([0x7f])
    {
        let mut req = format!("GET / HTTP/1.1\r\n{host}X-A: a").into_bytes();
        req.push(b);
        req.extend_from_slice(b"b\r\n\r\n");
        vectors.push((format!("header value with byte {b:#04x}"), req, "400"));
    }
    for (what, line) in [
        ("a bare CR in a value", "X-A: a\rb\r\n"),
        ("a line without a colon", "X-A\r\n"),
        ("an empty header name", ": v\r\n"),
        ("obs-fold", "X-A: a\r\n b\r\n"),
        ("a space before the colon", "X-A : v\r\n"),
        ("a line starting with a space", " X-A: v\r\n"),
    ] {
        vectors.push((
            what.into(),
            format!("GET / HTTP/1.1\r\n{host}{line}\r\n").into_bytes(),
            "400",
        ));
    }
    // Methods and targets.
    for b in (0u8..=0x20).chain([0x7f]).chain(separators.iter().copied()) {
        let mut req = b"G".to_vec();
        req.push(b);
        req.extend_from_slice(format!("ET / HTTP/1.1\r\n{host}\r\n").as_bytes());
        vectors.push((format!("method with byte {b:#04x}"), req, "400"));
    }
    // (`"`, `^`, `{`, `|` and `}` are not URI characters either, but carry no meaning to the
    // path checks and appear unencoded in real query strings: forwarded as sent, like Envoy.)
    for b in (0u8..0x20).chain([b' ', 0x7f, b'<', b'>', b'\\', b'`']) {
        let mut req = b"GET /a".to_vec();
        req.push(b);
        req.extend_from_slice(format!("b HTTP/1.1\r\n{host}\r\n").as_bytes());
        vectors.push((format!("target with byte {b:#04x}"), req, "400"));
    }
    for (what, line, expected) in [
        ("no version", "GET /\r\n", "400"),
        ("HTTP/1.2", "GET / HTTP/1.2\r\n", "400"),
        ("HTTP/2.0 in HTTP/1 syntax", "GET / HTTP/2.0\r\n", "400"),
        ("HTTP/0.9 style", "GET /\r\n\r\n", "400"),
        ("lower-case version", "GET / http/1.1\r\n", "400"),
        ("two spaces", "GET  / HTTP/1.1\r\n", "400"),
        ("a tab separator", "GET\t/ HTTP/1.1\r\n", "400"),
        ("an empty target", "GET  HTTP/1.1\r\n", "400"),
        ("a version with junk", "GET / HTTP/1.1x\r\n", "400"),
    ] {
        vectors.push((
            format!("request line: {what}"),
            format!("{line}{host}\r\n").into_bytes(),
            expected,
        ));
    }
    // Host: missing, empty, twice, or no host name.
    for (what, hosts) in [
        ("no Host", String::new()),
        ("two Host headers", format!("{host}Host: other.example\r\n")),
        ("Host twice, same value", format!("{host}{host}")),
    ] {
        vectors.push((
            what.into(),
            format!("GET / HTTP/1.1\r\n{hosts}\r\n").into_bytes(),
            "400",
        ));
    }
    for bad in ["a b", "a/b", "a@b", "[", "a\\b", "", "a:b:c", "a..b:1"] {
        vectors.push((
            format!("Host {bad:?}"),
            format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n").into_bytes(),
            "400",
        ));
    }
    // Framing.
    for cl in [
        "-1",
        "abc",
        "1e3",
        "0x10",
        "5 5",
        "5,6",
        "+5",
        "99999999999999999999",
        " ",
        "5\0",
    ] {
        vectors.push((
            format!("Content-Length {cl:?}"),
            format!("POST / HTTP/1.1\r\n{host}Content-Length: {cl}\r\n\r\nhello").into_bytes(),
            "400",
        ));
    }
    // (`chunked, chunked` is one unambiguous chunked body, re-framed: `hostile_http.rs`.)
    for te in [
        "chunked, identity",
        "identity",
        "gzip",
        "chunked, gzip",
        "xchunked",
        "chunked;",
        "chunked\0",
    ] {
        vectors.push((
            format!("Transfer-Encoding {te:?}"),
            format!("POST / HTTP/1.1\r\n{host}Transfer-Encoding: {te}\r\n\r\n0\r\n\r\n")
                .into_bytes(),
            "400",
        ));
    }
    for chunk in [
        "zz\r\nhello\r\n0\r\n\r\n",
        "-5\r\nhello\r\n0\r\n\r\n",
        "5 x\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX0\r\n\r\n",
        "10000000000000005\r\nhello\r\n0\r\n\r\n",
        "0x5\r\nhello\r\n0\r\n\r\n",
        "\r\n\r\n",
    ] {
        vectors.push((
            format!("chunked body {:?}", chunk.escape_default().to_string()),
            format!("POST / HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunk}").into_bytes(),
            "400",
        ));
    }
    vectors.push((
        "a 512 KiB header".into(),
        format!(
            "GET / HTTP/1.1\r\n{host}X-Big: {}\r\n\r\n",
            "a".repeat(512 * 1024)
        )
        .into_bytes(),
        "431",
    ));
    vectors.push((
        "10,000 headers".into(),
        format!(
            "GET / HTTP/1.1\r\n{host}{}\r\n",
            "X-A: b\r\n".repeat(10_000)
        )
        .into_bytes(),
        "431",
    ));
    let mut t = Tally::new("HTTP/1.1 requests");
    let mut reached = Vec::new();
    for (what, req, expected) in vectors {
        let (status, app) = h1(out, &req).await;
        if app {
            reached.push(what.clone());
        }
        t.record(what, expected, Some(&status));
    }
    assert!(reached.is_empty(), "reached the app: {reached:?}");
    let (status, body) = get(out, HOST, "").await;
    assert_eq!(status, 200, "{body}");
    t.finish(env!("CARGO_TARGET_TMPDIR"));
}

/// A header field as sent: name and value bytes.
type Field<'a> = (&'a [u8], &'a [u8]);

/// An HPACK integer with an `n`-bit prefix whose other bits are `flags`.
fn hpack_int(out: &mut Vec<u8>, flags: u8, n: u32, v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(flags | u8::try_from(v).unwrap());
        return;
    }
    out.push(flags | u8::try_from(max).unwrap());
    let mut rest = v - max;
    while rest >= 128 {
        out.push(u8::try_from(rest % 128).unwrap() | 0x80);
        rest /= 128;
    }
    out.push(u8::try_from(rest).unwrap());
}

/// A header block of literal fields (never indexed, raw strings): HPACK without a table, so
/// any bytes can be sent, as a hostile client would.
fn header_block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x10);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name);
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(payload.len()).unwrap().to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Opens an h2c connection, sends `fields` as stream 1's request (END_STREAM), and answers what
/// the server did with the stream: `RST_STREAM(code)`, `GOAWAY(code)`, the response status
/// when it came from the static table (`400`…), `response`, or `closed`.
async fn h2(addr: SocketAddr, fields: &[(&[u8], &[u8])]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    req.extend(frame(4, 0, 0, &[]));
    req.extend(frame(1, 0x5, 1, &header_block(fields)));
    s.write_all(&req).await.unwrap();
    let mut head = [0u8; 9];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut head)).await;
        if !matches!(read, Ok(Ok(_))) {
            return "closed".into();
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).await.is_err() {
            return "closed".into();
        }
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let code = |p: &[u8]| u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
        match head[3] {
            // SETTINGS: acknowledge the server's, as a client must.
            4 if head[4] & 1 == 0 => s.write_all(&frame(4, 1, 0, &[])).await.unwrap(),
            3 if stream == 1 => return format!("RST_STREAM({})", code(&payload)),
            7 => return format!("GOAWAY({})", code(&payload[4..])),
            1 if stream == 1 => {
                let status = match payload.first().map(|b| b & 0x7f) {
                    Some(8) => "200",
                    Some(12) => "400",
                    Some(13) => "404",
                    Some(14) => "500",
                    _ => "response",
                };
                return status.into();
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http2_requests_are_reset_and_never_reach_the_app() {
    let ca = alpha_ca();
    let (srv, _e) = echo_server(&ca, echo_config("echo-1"), Expect::AnyKnownDomain, vec![]).await;
    let cli = client(&ca, UI, vec![endpoint_of(&srv)]).await;
    let out = cli.outbound.unwrap();
    let good: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", HOST.as_bytes()),
        (b":path", b"/"),
    ];
    // The control: the same request well-formed reaches the app.
    assert_eq!(h2(out, &good).await, "200");
    let with = |extra: &[(&'static [u8], &'static [u8])]| {
        let mut f = good.clone();
        f.extend_from_slice(extra);
        f
    };
    // Each vector with the refusal expected: the stream reset (RST_STREAM PROTOCOL_ERROR), or
    // — for bytes HPACK decoding refuses, in the h2 library — the connection (GOAWAY
    // PROTOCOL_ERROR: only the sender's own connection ends), or the sidecar's 400.
    let mut vectors: Vec<(String, Vec<Field<'_>>, &str)> = Vec::new();
    // Connection-specific fields (RFC 9113 §8.2.2) and `te` other than `trailers`.
    for (name, value) in [
        (&b"connection"[..], &b"close"[..]),
        (b"keep-alive", b"timeout=5"),
        (b"proxy-connection", b"keep-alive"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"websocket"),
        (b"te", b"gzip"),
        (b"te", b"trailers, gzip"),
    ] {
        vectors.push((
            format!("{} field", String::from_utf8_lossy(name)),
            with(&[(name, value)]),
            "RST_STREAM(1)",
        ));
    }
    // Field names: upper case, and every byte a token must not hold.
    let names: Vec<Vec<u8>> = [
        b'A', b'Z', b' ', b'\0', b'\r', b'\n', b':', b'"', b'(', b'@', 0x7f, 0x80, 0xff,
    ]
    .iter()
    .map(|b| {
        let mut n = b"x-".to_vec();
        n.push(*b);
        n.push(b'a');
        n
    })
    .collect();
    for n in &names {
        let mut f = good.clone();
        f.push((n.as_slice(), b"v"));
        // `"` is no token character either, but h2 lets it through: the sidecar, which
        // cannot make a header name of it, answers 400.
        let expected = if n.contains(&b'"') {
            "400"
        } else {
            "GOAWAY(1)"
        };
        vectors.push((
            format!("field name {:?}", n.escape_ascii().to_string()),
            f,
            expected,
        ));
    }
    for v in [&b"a\0b"[..], b"a\rb", b"a\nb"] {
        let mut f = good.clone();
        f.push((b"x-a", v));
        vectors.push((
            format!("field value {:?}", v.escape_ascii().to_string()),
            f,
            "GOAWAY(1)",
        ));
    }
    // Whitespace around a value (RFC 9113 §8.2.1): h2 passes it; the sidecar answers 400
    // (`InvalidFieldValue`) rather than let an HTTP/1.1 upstream read it trimmed.
    for v in [&b" leading"[..], b"trailing ", b"\tboth\t", b" "] {
        let mut f = good.clone();
        f.push((b"x-a", v));
        vectors.push((
            format!("field value {:?}", v.escape_ascii().to_string()),
            f,
            "400",
        ));
    }
    // Pseudo-header fields: missing, twice, unknown, after a regular field, empty.
    for missing in [&b":method"[..], b":scheme", b":path"] {
        let f: Vec<_> = good
            .iter()
            .filter(|(n, _)| *n != missing)
            .copied()
            .collect();
        vectors.push((
            format!("no {}", String::from_utf8_lossy(missing)),
            f,
            "RST_STREAM(1)",
        ));
    }
    for twice in [&b":method"[..], b":scheme", b":path", b":authority"] {
        let mut f = good.clone();
        let again = *good.iter().find(|(n, _)| *n == twice).unwrap();
        f.push(again);
        vectors.push((
            format!("{} twice", String::from_utf8_lossy(twice)),
            f,
            "RST_STREAM(1)",
        ));
    }
    vectors.push((
        "an unknown pseudo-field".into(),
        with(&[(b":foo", b"bar")]),
        "GOAWAY(1)",
    ));
    vectors.push((
        "a response pseudo-field".into(),
        with(&[(b":status", b"200")]),
        "RST_STREAM(1)",
    ));
    let mut late = vec![(&b"x-a"[..], &b"b"[..])];
    late.extend(good.iter().copied());
    vectors.push((
        "a pseudo-field after a regular one".into(),
        late,
        "RST_STREAM(1)",
    ));
    let mut empty_path = good.clone();
    empty_path[3] = (b":path", b"");
    vectors.push(("an empty :path".into(), empty_path, "RST_STREAM(1)"));
    let mut t = Tally::new("HTTP/2 requests");
    for (what, fields, expected) in vectors {
        let got = h2(out, &fields).await;
        t.record(what, expected, Some(&got));
    }
    assert_eq!(h2(out, &good).await, "200");
    t.finish(env!("CARGO_TARGET_TMPDIR"));
}
