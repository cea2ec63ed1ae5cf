//! TCP service ports over real sockets and mTLS on loopback: the app's stream reaches a TCP app
//! behind the server sidecar byte for byte; a port the server does not serve fails at the
//! handshake (nothing reaches any app); authorization by identity holds for streams, and a DENY
//! rule naming HTTP-only conditions fails closed; endpoints that refuse are skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use meshfed_core::authz::{Action, Operation, Policy, Rule};
use meshfed_core::traffic::TrafficPolicy;
use meshfed_proxy::sidecar::{self, Endpoint, HttpVersion, Running, SidecarConfig, TcpForward};
use meshfed_trust::CertificateAuthority;
use meshfed_trust::verify::Expect;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP app that echoes every byte, on 127.0.0.1.
async fn tcp_echo() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// The server sidecar: its HTTP app is irrelevant here; `port` is its TCP port.
async fn server(ca: &CertificateAuthority, port: u16, policies: Vec<Policy>) -> Running {
    let cfg = SidecarConfig {
        outbound: None,
        inbound: Some(any()),
        app: Some("127.0.0.1:9".parse().unwrap()),
        app_protocol: HttpVersion::Http1,
        allow: Expect::AnyKnownDomain,
        services: vec![],
        policies,
        service: "shop/echo".into(),
        admin: None,
        tcp: vec![],
        tcp_ports: vec![port],
        names: vec![],
        idle_timeout: meshfed_proxy::idle::IDLE_TIMEOUT,
    };
    sidecar::start(cfg, resolver(ca, ECHO), bundles(ca))
        .await
        .unwrap()
}

async fn client(ca: &CertificateAuthority, port: u16, endpoints: Vec<Endpoint>) -> Running {
    let mut cfg = client_config(vec![], TrafficPolicy::default());
    cfg.tcp = vec![TcpForward {
        listen: any(),
        host: HOST.parse().unwrap(),
        port,
        endpoints,
    }];
    sidecar::start(cfg, resolver(ca, UI), bundles(ca))
        .await
        .unwrap()
}

/// Writes `msg` through the client's TCP listener; what came back before the stream closed or
/// two seconds passed.
async fn exchange(c: &Running, msg: &[u8]) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(c.tcp[0]).await.unwrap();
    let _ = s.write_all(msg).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while got.len() < msg.len() {
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    got
}

fn tcp_count(r: &Running, direction: &str, result: &str) -> u64 {
    metric(
        &r.stats.encode(),
        &format!("meshfed_tcp_streams_total{{direction=\"{direction}\",result=\"{result}\"}} "),
    )
}

/// Waits until a counter reaches `n` (counted when the stream ends, after the reply).
async fn until_count(r: &Running, direction: &str, result: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tcp_count(r, direction, result) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{direction} {result} never reached {n}:\n{}",
            r.stats.encode()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_reach_the_tcp_app_and_only_served_ports() {
    let ca = alpha_ca();
    let app = tcp_echo().await;
    let srv = server(&ca, app.port(), vec![]).await;
    // A refusing endpoint first: skipped for the next.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dead = Endpoint {
        addr: closed,
        ..endpoint_of(&srv)
    };
    let cli = client(&ca, app.port(), vec![dead, endpoint_of(&srv)]).await;
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        exchange(&cli, &payload).await,
        payload,
        "bytes arrive intact both ways"
    );
    until_count(&srv, "inbound", "forwarded", 1).await;

    // The server does not serve port+1: the handshake fails, nothing is forwarded.
    let other = client(&ca, app.port() + 1, vec![endpoint_of(&srv)]).await;
    assert!(exchange(&other, b"hello").await.is_empty());
    until_count(&other, "outbound", "upstream_unavailable", 1).await;
    assert_eq!(tcp_count(&srv, "inbound", "forwarded"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_authorized_by_identity_and_http_only_denies_fail_closed() {
    let ca = alpha_ca();
    let app = tcp_echo().await;
    // DENY GET requests: a stream has no method, so the rule denies every stream.
    let deny_gets = Policy {
        name: "no-gets".into(),
        action: Action::Deny,
        rules: vec![Rule {
            from: vec![],
            to: vec![Operation {
                paths: vec![],
                methods: vec!["GET".into()],
            }],
        }],
    };
    let srv = server(&ca, app.port(), vec![deny_gets]).await;
    let cli = client(&ca, app.port(), vec![endpoint_of(&srv)]).await;
    assert!(exchange(&cli, b"hello").await.is_empty());
    until_count(&srv, "inbound", "denied", 1).await;
    assert_eq!(srv.stats.denied.get(), 1);
    assert_eq!(tcp_count(&srv, "inbound", "forwarded"), 0);
}
