//! The admin endpoint every meshfed component serves, on hyper: one set of health paths —
//! `/healthz/live` (the process answers) and `/healthz/ready` (the component's own check) —
//! plus the component's pages (`/status`, `/metrics`…). GET and HEAD only; headers must
//! arrive within [`HEADER_READ_TIMEOUT`]; bodies are not read.
//!
//! Pages marked private (a component's `/status`) are served only to loopback callers and
//! only on a loopback address: an admin port reachable from elsewhere serves health and
//! metrics (what kubelet probes and Prometheus need) but never the status (CF4: it would be
//! an information and SSRF target).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::http::{Body, text};

/// How long a request's headers may take.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the component is not ready: a stable reason and a detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct NotReady {
    pub reason: &'static str,
    pub detail: String,
}

/// The component's readiness check.
pub type ReadyCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), NotReady>> + Send>> + Send + Sync>;

/// A page: its content type and body, computed per request.
#[derive(Clone)]
pub struct Page {
    pub content_type: &'static str,
    pub body: Arc<dyn Fn() -> String + Send + Sync>,
    /// Served only to loopback callers on a loopback address.
    pub private: bool,
}

impl std::fmt::Debug for Page {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Page")
            .field("content_type", &self.content_type)
            .field("private", &self.private)
            .finish_non_exhaustive()
    }
}

impl Page {
    /// A private JSON page (a component's status).
    pub fn status(body: impl Fn() -> String + Send + Sync + 'static) -> Self {
        Self {
            content_type: "application/json",
            body: Arc::new(body),
            private: true,
        }
    }

    /// An OpenMetrics page.
    pub fn metrics(body: impl Fn() -> String + Send + Sync + 'static) -> Self {
        Self {
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body: Arc::new(body),
            private: false,
        }
    }
}

/// What an admin endpoint serves besides liveness.
#[derive(Clone, Default)]
pub struct Admin {
    /// By path, e.g. `/status`.
    pub pages: BTreeMap<&'static str, Page>,
    /// `/healthz/ready`; none: ready whenever live.
    pub ready: Option<ReadyCheck>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("pages", &self.pages.keys().collect::<Vec<_>>())
            .field("ready", &self.ready.is_some())
            .finish()
    }
}

/// Why an admin endpoint did not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("binding the admin endpoint {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
}

impl AdminError {
    pub fn reason(&self) -> &'static str {
        "BindFailed"
    }
}

/// Binds `addr` and serves `admin` until the returned task is aborted (or dropped with its
/// owner's task set). Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    admin: Admin,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), AdminError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| AdminError::Bind(addr, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| AdminError::Bind(addr, e))?;
    Ok((bound, spawn(listener, admin)))
}

/// Serves `admin` on an already bound listener.
pub fn spawn(listener: TcpListener, admin: Admin) -> tokio::task::JoinHandle<()> {
    let admin = Arc::new(admin);
    let local_loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    crate::accept::accept_each(listener, move |tcp, remote| {
        let admin = admin.clone();
        let private_ok = local_loopback && remote.ip().is_loopback();
        async move {
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move {
                    Ok::<_, Infallible>(
                        handle(&admin, private_ok, req.method(), req.uri().path()).await,
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        }
    })
}

async fn handle(admin: &Admin, private_ok: bool, method: &Method, path: &str) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed: GET only\n",
        );
    }
    match path {
        "/healthz/live" => text(StatusCode::OK, "live\n"),
        "/healthz/ready" => match &admin.ready {
            None => text(StatusCode::OK, "ready\n"),
            Some(check) => match check().await {
                Ok(()) => text(StatusCode::OK, "ready\n"),
                Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
            },
        },
        path => match admin.pages.get(path) {
            Some(p) if p.private && !private_ok => text(
                StatusCode::FORBIDDEN,
                format!(
                    "LoopbackOnly: {path} is served to loopback callers on a loopback address\n"
                ),
            ),
            Some(p) => {
                let mut r = text(StatusCode::OK, (p.body)());
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    HeaderValue::from_static(p.content_type),
                );
                r
            }
            None => {
                let mut known = vec!["/healthz/live", "/healthz/ready"];
                known.extend(admin.pages.keys());
                text(
                    StatusCode::NOT_FOUND,
                    format!("NotFound: try {}\n", known.join(", ")),
                )
            }
        },
    }
}

/// `GET path` from an admin endpoint (what `meshfed status` uses): the body of a 200 answer.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, GetError> {
    use http_body_util::{BodyExt, Empty, Limited};
    let run = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| GetError::Connect(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| GetError::Http(e.to_string()))?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<hyper::body::Bytes>::new())
            .map_err(|e| GetError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| GetError::Http(e.to_string()))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), 16 << 20)
            .collect()
            .await
            .map_err(|e| GetError::Http(e.to_string()))?
            .to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        if status != StatusCode::OK {
            return Err(GetError::Status(status.as_u16(), body.trim().to_owned()));
        }
        Ok(body)
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| GetError::Timeout(timeout))?
}

/// Why an admin page could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GetError {
    #[error("connecting: {0}")]
    Connect(String),
    #[error("{0}")]
    Http(String),
    #[error("HTTP {0}: {1}")]
    Status(u16, String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> Admin {
        let mut a = Admin::default();
        a.pages.insert("/status", Page::status(|| "{}".to_owned()));
        a.pages
            .insert("/metrics", Page::metrics(|| "# EOF\n".to_owned()));
        a
    }

    async fn status(a: &Admin, private_ok: bool, method: Method, path: &str) -> StatusCode {
        handle(a, private_ok, &method, path).await.status()
    }

    #[tokio::test]
    async fn health_and_metrics_for_all_status_only_for_loopback() {
        let a = admin();
        for private_ok in [true, false] {
            assert_eq!(
                status(&a, private_ok, Method::GET, "/healthz/live").await,
                StatusCode::OK
            );
            assert_eq!(
                status(&a, private_ok, Method::GET, "/healthz/ready").await,
                StatusCode::OK
            );
            assert_eq!(
                status(&a, private_ok, Method::GET, "/metrics").await,
                StatusCode::OK
            );
            assert_eq!(
                status(&a, private_ok, Method::POST, "/metrics").await,
                StatusCode::METHOD_NOT_ALLOWED
            );
            assert_eq!(
                status(&a, private_ok, Method::GET, "/nope").await,
                StatusCode::NOT_FOUND
            );
        }
        assert_eq!(
            status(&a, true, Method::GET, "/status").await,
            StatusCode::OK
        );
        assert_eq!(
            status(&a, false, Method::GET, "/status").await,
            StatusCode::FORBIDDEN
        );
    }

    #[tokio::test]
    async fn readiness_is_the_components_check() {
        let mut a = admin();
        a.ready = Some(Arc::new(|| {
            Box::pin(async {
                Err(NotReady {
                    reason: "Starting",
                    detail: "no snapshot yet".into(),
                })
            })
        }));
        let r = handle(&a, true, &Method::GET, "/healthz/ready").await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            status(&a, true, Method::GET, "/healthz/live").await,
            StatusCode::OK
        );
    }
}
