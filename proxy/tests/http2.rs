//! HTTP/2 through the sidecars, over real sockets and mTLS on loopback: an h2c (prior
//! knowledge) client reaches an HTTP/2 service whose app speaks h2c, the sidecars negotiate h2
//! by ALPN between them, many requests share one connection, trailers and `te: trailers` (what
//! gRPC needs) cross both hops, and HTTP/1.1 and HTTP/2 clients and apps mix freely.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;

use common::*;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshfed_core::traffic::TrafficPolicy;
use meshfed_proxy::sidecar::{self, HttpVersion, Running, SidecarConfig};
use meshfed_trust::CertificateAuthority;

/// A server sidecar for an app at `app` speaking `version`.
async fn server_for(ca: &CertificateAuthority, app: SocketAddr, version: HttpVersion) -> Running {
    let cfg = SidecarConfig {
        app_protocol: version,
        ..server_config(app)
    };
    sidecar::start(cfg, resolver(ca, ECHO), bundles(ca))
        .await
        .unwrap()
}

/// A client sidecar whose route to [`HOST`] speaks `version`.
async fn client_for(ca: &CertificateAuthority, srv: &Running, version: HttpVersion) -> Running {
    let mut cfg = client_config(vec![endpoint_of(srv)], TrafficPolicy::default());
    cfg.services[0].protocol = version;
    sidecar::start(cfg, resolver(ca, UI), bundles(ca))
        .await
        .unwrap()
}

/// An h2c app answering like gRPC: a body, then trailers; it reports whether `te: trailers`
/// and the caller's identity arrived.
async fn grpc_like_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(any()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let te = req
                        .headers()
                        .get("te")
                        .map(|v| v.to_str().unwrap_or("").to_owned());
                    let caller = req
                        .headers()
                        .get("x-meshfed-client-id")
                        .map(|v| v.to_str().unwrap_or("").to_owned());
                    let body = format!("version={:?} te={te:?} caller={caller:?}", req.version());
                    let mut trailers = hyper::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    let body = Full::new(Bytes::from(body))
                        .with_trailers(async move { Some(Ok::<_, Infallible>(trailers)) });
                    Ok::<_, Infallible>(Response::new(body))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// An h2c client connection to `addr`.
async fn h2c(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .uri(format!("http://{HOST}{path}"))
        .header("te", "trailers")
        .body(Empty::new())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_reach_h2c_apps_over_h2_between_the_sidecars() {
    let ca = alpha_ca();
    let (app, _task) = meshfed_proxy::echo::start(any(), echo_config("echo-h2"))
        .await
        .unwrap();
    let srv = server_for(&ca, app, HttpVersion::Http2).await;
    let cli = client_for(&ca, &srv, HttpVersion::Http2).await;
    let mut s = h2c(cli.outbound.unwrap()).await;
    // Twenty concurrent requests on one client connection, multiplexed onward.
    let mut pending = Vec::new();
    for i in 0..20 {
        s.ready().await.unwrap();
        pending.push(s.send_request(get(&format!("/n/{i}"))));
    }
    for (i, p) in pending.into_iter().enumerate() {
        let resp = p.await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v = body_json(&String::from_utf8_lossy(&body));
        assert_eq!(v["version"], "HTTP/2.0", "the app got HTTP/2: {v}");
        assert_eq!(v["path"], format!("/n/{i}"));
        assert_eq!(v["authority"], HOST, "{v}");
        assert_eq!(v["caller"], UI, "{v}");
    }
    // One mTLS connection between the sidecars carried all of them.
    let ok = r#"meshfed_tls_handshakes_total{direction="inbound",result="ok"} "#;
    assert_eq!(metric(&srv.stats.encode(), ok), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_and_te_trailers_cross_both_hops() {
    let ca = alpha_ca();
    let app = grpc_like_app().await;
    let srv = server_for(&ca, app, HttpVersion::Http2).await;
    let cli = client_for(&ca, &srv, HttpVersion::Http2).await;
    let mut s = h2c(cli.outbound.unwrap()).await;
    let resp = s.send_request(get("/pkg.Svc/Method")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrived");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    let body = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    assert!(body.contains("version=HTTP/2.0"), "{body}");
    assert!(body.contains("te=Some(\"trailers\")"), "{body}");
    assert!(body.contains(&format!("caller=Some(\"{UI}\")")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_mix_on_either_side() {
    let ca = alpha_ca();
    // An HTTP/1.1 client, an HTTP/2 service.
    let (app, _t1) = meshfed_proxy::echo::start(any(), echo_config("h2-app"))
        .await
        .unwrap();
    let srv = server_for(&ca, app, HttpVersion::Http2).await;
    let cli = client_for(&ca, &srv, HttpVersion::Http2).await;
    let (status, body) = common::get(cli.outbound.unwrap(), HOST, "").await;
    assert_eq!(status, 200, "{body}");
    let v = body_json(&body);
    assert_eq!(
        (v["version"].as_str(), v["authority"].as_str()),
        (Some("HTTP/2.0"), Some(HOST)),
        "{v}"
    );
    // An h2c client, an HTTP/1.1 service: the app gets HTTP/1.1 with a Host header.
    let (app, _t2) = meshfed_proxy::echo::start(any(), echo_config("h1-app"))
        .await
        .unwrap();
    let srv = server_for(&ca, app, HttpVersion::Http1).await;
    let cli = client_for(&ca, &srv, HttpVersion::Http1).await;
    let mut s = h2c(cli.outbound.unwrap()).await;
    let resp = s.send_request(get("/x?y=1")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v = body_json(&String::from_utf8_lossy(&body));
    assert_eq!(v["version"], "HTTP/1.1", "{v}");
    assert_eq!(v["host"], HOST, "{v}");
    assert_eq!(
        (v["path"].as_str(), v["query"].as_str()),
        (Some("/x"), Some("y=1"))
    );
    assert_eq!(v["caller"], UI);
}
