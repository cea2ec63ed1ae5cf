//! The inbound path: a verified caller's request, authorized and normalized, to the local app.

use super::*;

/// What every inbound connection shares.
pub(super) struct Inbound {
    pub(super) app: SocketAddr,
    pub(super) app_protocol: HttpVersion,
    /// Idle connections to the app.
    pub(super) app_pool: Arc<Pool>,
    /// Requests and latency, labelled with this workload's service.
    pub(super) metrics: Arc<ServiceMetrics>,
    pub(super) policies: Shared<[Policy]>,
    pub(super) stats: Arc<Stats>,
}

/// The verified caller of one inbound connection, and the header that tells the app.
pub(super) struct Caller {
    pub(super) id: SpiffeId,
    pub(super) header: Option<HeaderValue>,
}

pub(super) async fn inbound(
    ctx: Arc<(Inbound, Caller)>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let t0 = Instant::now();
    let resp = to_app(&ctx.0, &ctx.1, req, t0).await;
    ctx.0.metrics.record(resp.status().as_u16(), t0.elapsed());
    Ok(resp)
}

/// The path a calling sidecar probes an ejected endpoint on: answered by the receiving
/// sidecar itself (200 when its app accepts connections, 503 otherwise), never by the app.
pub const READY_PATH: &str = "/.well-known/meshfed/ready";

/// An inbound request from a verified caller: path check, authorization, then the app.
/// `t0` is when the request came.
pub(super) async fn to_app(
    inb: &Inbound,
    caller: &Caller,
    req: Request<Incoming>,
    t0: Instant,
) -> Response<Body> {
    if req.uri().path() == READY_PATH && req.method() == hyper::Method::GET {
        let ready = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(inb.app))
            .await
            .is_ok_and(|r| r.is_ok());
        return if ready {
            text(StatusCode::OK, "ready\n")
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, "AppUnavailable\n")
        };
    }
    if let Some(refused) = crate::http::refuse_ambiguous(&req) {
        inb.stats.bad_requests.inc();
        return refused;
    }
    // The path is normalized once; the same string is checked and forwarded.
    let path = match authz::normalize_path(req.uri().path()) {
        Ok(p) => p,
        Err(e) => {
            inb.stats.bad_requests.inc();
            return text(StatusCode::BAD_REQUEST, format!("{}: {e}\n", e.reason()));
        }
    };
    let decision = authz::decide(
        &current(&inb.policies),
        &authz::Request {
            caller: &caller.id,
            method: req.method().as_str(),
            path: &path,
        },
    );
    if let Decision::Deny { policy, reason } = decision {
        inb.stats.denied.inc();
        let by = policy.map_or_else(String::new, |p| format!(" (policy {p})"));
        return text(
            StatusCode::FORBIDDEN,
            format!("AccessDenied: {reason}{by}\n"),
        );
    }
    inb.stats.allowed.inc();
    let app = inb.app;
    // The path the policies saw, when normalizing changed it.
    let rewritten = match path {
        Cow::Borrowed(_) => None,
        Cow::Owned(p) => Some(p),
    };
    let (mut parts, body) = req.into_parts();
    // Needed for HTTP/2 to the app (`:authority`) or an HTTP/1.1 request without `Host`.
    let authority = (inb.app_protocol == HttpVersion::Http2
        || !parts.headers.contains_key(hyper::header::HOST))
    .then(|| {
        parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                parts
                    .headers
                    .get(hyper::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .map_or_else(|| app.to_string(), str::to_owned)
    });
    if rewritten.is_some() || parts.uri.scheme().is_some() {
        let path = rewritten.as_deref().unwrap_or(parts.uri.path());
        let target = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
        match hyper::Uri::try_from(target) {
            Ok(u) => parts.uri = u,
            Err(_) => {
                return text(StatusCode::BAD_REQUEST, "InvalidPath: unparseable target\n");
            }
        }
    }
    // Remove every client-sent copy, also one named in Connection (H12), then add ours.
    strip_hop_by_hop(&mut parts.headers);
    // (`insert` and `remove` both drop every value the name had.)
    match &caller.header {
        Some(v) => parts.headers.insert(CLIENT_ID_HEADER, v.clone()),
        None => parts.headers.remove(&CLIENT_ID_HEADER),
    };
    parts.headers.remove(&crate::FORWARDED_CLIENT_CERT);
    // Hop-by-hop headers are already gone (above).
    let target = parts.uri.clone();
    let mut req = Request::from_parts(parts, boxed(body));
    set_target(
        &mut req,
        inb.app_protocol,
        authority.as_deref().unwrap_or_default(),
        &target,
    );
    // Repeating it elsewhere does no harm if the app saw it after all.
    let repeatable = matches!(
        *req.method(),
        hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS | hyper::Method::TRACE
    ) && req.body().is_end_stream();
    let mut gate = inb.app_pool.gate(inb.app_protocol).await;
    if let Some(mut s) = inb.app_pool.take(t0) {
        drop(gate.take());
        match pool::send(&mut s, req).await {
            Ok(resp) => return response(inb.app_pool.keep(s, resp)),
            Err(SendError::NotSent(back, _)) => req = *back,
            Err(SendError::Broken(e)) if e.is_user() => return crate::http::bad_request_body(&e),
            Err(SendError::Broken(e)) => {
                let r = text(StatusCode::BAD_GATEWAY, format!("AppError: {e}\n"));
                return if repeatable {
                    not_delivered(r, "app-connection-lost")
                } else {
                    r
                };
            }
        }
    }
    let connected = async {
        let tcp = TcpStream::connect(app).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        pool::handshake(tcp, inb.app_protocol)
            .await
            .map_err(|e| e.to_string())
    };
    let mut s = match connected.await {
        Ok(s) => {
            inb.app_pool.share(&s);
            drop(gate);
            s
        }
        Err(e) => {
            let r = text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("AppUnavailable: {e}\n"),
            );
            return not_delivered(r, "app-unavailable");
        }
    };
    match pool::send(&mut s, req).await {
        Ok(resp) => response(inb.app_pool.keep(s, resp)),
        Err(SendError::Broken(e)) if e.is_user() => crate::http::bad_request_body(&e),
        // Never written: not delivered, whatever the method.
        Err(SendError::NotSent(_, e)) => not_delivered(
            text(StatusCode::BAD_GATEWAY, format!("AppError: {e}\n")),
            "app-connection-lost",
        ),
        // The app went away with the request (killed as it arrived): a request safe to
        // repeat may go elsewhere, as on a reused connection.
        Err(SendError::Broken(e)) => {
            let r = text(StatusCode::BAD_GATEWAY, format!("AppError: {e}\n"));
            if repeatable {
                not_delivered(r, "app-connection-lost")
            } else {
                r
            }
        }
    }
}
