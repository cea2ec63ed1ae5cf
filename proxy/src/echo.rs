//! `meshfed echo`: a test workload that answers every request with JSON naming its mesh,
//! service and instance, and the caller's verified identity as the sidecar passed it on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshfed_core::traffic::Share;
use serde_json::json;
use tokio::net::TcpListener;

use crate::CLIENT_ID_HEADER;
use crate::http::{Body, json};

/// Request bodies echo reads to the end (larger ones: `"received": null`).
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// What an echo instance reports and how it behaves.
#[derive(Debug, Clone)]
pub struct EchoConfig {
    pub mesh: String,
    pub service: String,
    pub instance: String,
    /// Status code of every answer (default 200).
    pub status: u16,
    /// Added latency before answering.
    pub latency: Duration,
    /// Share of requests answered 503 (`"failed": true` in the body) instead of `status`.
    pub failure: Share,
}

impl Default for EchoConfig {
    fn default() -> Self {
        Self {
            mesh: String::new(),
            service: String::new(),
            instance: String::new(),
            status: 200,
            latency: Duration::ZERO,
            failure: Share::ZERO,
        }
    }
}

async fn answer(
    cfg: Arc<EchoConfig>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if !cfg.latency.is_zero() {
        tokio::time::sleep(cfg.latency).await;
    }
    let caller = req
        .headers()
        .get(CLIENT_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let failed = cfg.failure.hit(fastrand::u32(..Share::MILLION));
    let (head, body) = req.into_parts();
    // Read the whole body (bounded) so callers can check what arrived.
    let received = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => Some(b.to_bytes().len()),
        Err(_) => None,
    };
    let status = if failed {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::from_u16(cfg.status).unwrap_or(StatusCode::OK)
    };
    Ok(json(
        status,
        &json!({
            "mesh": cfg.mesh,
            "service": cfg.service,
            "instance": cfg.instance,
            "caller": caller,
            "method": head.method.as_str(),
            "path": head.uri.path(),
            "query": head.uri.query(),
            "received": received,
            "failed": failed,
            "version": format!("{:?}", head.version),
            "host": head.headers.get(hyper::header::HOST).and_then(|v| v.to_str().ok()),
            "authority": head.uri.authority().map(|a| a.as_str()),
        }),
    ))
}

/// Serves echo on `listener` until the task is dropped.
pub fn serve(listener: TcpListener, cfg: EchoConfig) -> tokio::task::JoinHandle<()> {
    let cfg = Arc::new(cfg);
    crate::accept::accept_each(listener, move |tcp, _| {
        let cfg = cfg.clone();
        async move {
            let svc = service_fn(move |req| answer(cfg.clone(), req));
            // HTTP/1.1, or HTTP/2 with prior knowledge (h2c), as gRPC servers take it.
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        }
    })
}

/// Binds `addr` and serves echo; returns the bound address.
pub async fn start(
    addr: SocketAddr,
    cfg: EchoConfig,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((bound, serve(listener, cfg)))
}
