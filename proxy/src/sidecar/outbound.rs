//! The outbound path: the request from the local app, its route, attempts and retries, the
//! mTLS connection to the chosen endpoint, and the answer.

use super::*;

/// The service name a request gives: its authority (HTTP/2, or an absolute-form target), else
/// its `Host` header, without the port and a final dot — not yet checked or lower-cased.
pub(super) fn host_of(req: &Request<Incoming>) -> Option<&str> {
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(hyper::header::HOST)?.to_str().ok()?,
    };
    let name = match raw.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|c| c.is_ascii_digit()) => h,
        _ => raw,
    };
    Some(name.strip_suffix('.').unwrap_or(name))
}

/// ALPN protocol names: HTTP/2 and HTTP/1.1 between sidecars.
pub(super) const ALPN_H2: &[u8] = b"h2";
pub(super) const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Sets the request's version and target for the next hop: HTTP/1.1 takes the origin form and a
/// `Host` header (added from `authority` when the request came over HTTP/2, which has none);
/// HTTP/2 takes the absolute form, whose authority becomes `:authority`.
pub(super) fn set_target(
    req: &mut Request<Body>,
    version: HttpVersion,
    authority: &str,
    uri: &hyper::Uri,
) {
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    match version {
        HttpVersion::Http1 => {
            *req.version_mut() = hyper::Version::HTTP_11;
            *req.uri_mut() = if uri.scheme().is_none() && uri.authority().is_none() {
                uri.clone()
            } else {
                pq.parse().unwrap_or_default()
            };
            if !req.headers().contains_key(hyper::header::HOST)
                && let Ok(v) = HeaderValue::from_str(authority)
            {
                req.headers_mut().insert(hyper::header::HOST, v);
            }
        }
        HttpVersion::Http2 => {
            *req.version_mut() = hyper::Version::HTTP_2;
            *req.uri_mut() = format!("http://{authority}{pq}")
                .parse()
                .unwrap_or_default();
            // :authority carries it; a second copy could disagree.
            req.headers_mut().remove(hyper::header::HOST);
        }
    }
}

/// An upstream's response, ready to pass on.
pub(super) fn response(mut resp: Response<Body>) -> Response<Body> {
    strip_hop_by_hop(resp.headers_mut());
    // Only a sidecar may say a request was not delivered; an app's copy is dropped.
    resp.headers_mut().remove(&NOT_DELIVERED);
    resp
}

/// Set by a receiving sidecar on an answer to a request it never handed to its app (the app
/// refused the connection), or to a request safe to repeat (an idempotent method, no body)
/// whose reused connection to the app broke — as it does when the app dies with idle
/// connections open: the calling sidecar may send it elsewhere like a connection failure, and
/// removes the header.
pub(super) const NOT_DELIVERED: HeaderName = HeaderName::from_static("x-meshfed-not-delivered");

/// Marks a receiving sidecar's answer as [`NOT_DELIVERED`], saying why.
pub(super) fn not_delivered(mut r: Response<Body>, why: &'static str) -> Response<Body> {
    r.headers_mut()
        .insert(NOT_DELIVERED, HeaderValue::from_static(why));
    r
}

/// An upstream answer: [`Outcome::NotDelivered`] when the receiving sidecar says so.
pub(super) fn answered(resp: Response<Body>) -> Outcome {
    let not_delivered = resp.headers().contains_key(&NOT_DELIVERED);
    let resp = response(resp);
    if not_delivered {
        Outcome::NotDelivered(resp)
    } else {
        Outcome::Answer(resp)
    }
}

/// Request bodies up to this size are kept so the request can be retried; larger ones stream
/// and are retried only when the connection failed (nothing was sent).
pub const MAX_REPLAY_BODY: u64 = 64 * 1024;

/// The request body, kept for replay or streamed once.
pub(super) enum Payload {
    Kept(Bytes),
    Stream(Option<Body>),
}

impl Payload {
    pub(super) fn take(&mut self) -> Option<Body> {
        match self {
            // An empty body boxes without allocating.
            Self::Kept(b) if b.is_empty() => Some(Empty::new().map_err(|n| match n {}).boxed()),
            Self::Kept(b) => Some(Full::new(b.clone()).map_err(|n| match n {}).boxed()),
            Self::Stream(s) => s.take(),
        }
    }

    /// Puts back a streamed body that was never sent.
    pub(super) fn restore(&mut self, body: Body) {
        if let Self::Stream(s @ None) = self {
            *s = Some(body);
        }
    }

    pub(super) fn replayable(&self) -> bool {
        match self {
            Self::Kept(_) => true,
            Self::Stream(s) => s.is_some(),
        }
    }
}

/// What one attempt came to.
pub(super) enum Outcome {
    Answer(Response<Body>),
    /// Connecting or the TLS handshake failed: nothing was sent.
    ConnectFailed(String),
    /// The receiving sidecar could not hand the request to its app (its answer, without the
    /// marker): retried like a connection failure.
    NotDelivered(Response<Body>),
    /// The upstream broke the exchange after the request was (partly) sent.
    Reset(String),
    /// The per-try timeout passed.
    TimedOut,
    /// The connection pool and its queue were full: refused without trying.
    Overflow,
    /// The client's own request body broke (bad chunked framing, a reset): not the
    /// endpoint's fault, never retried, answered 400 and the connection closed.
    BadRequestBody(String),
}

impl Outcome {
    /// An exchange that broke after sending began: the client's body, or the upstream.
    pub(super) fn broken(e: &hyper::Error) -> Self {
        if e.is_user() {
            Self::BadRequestBody(e.to_string())
        } else {
            Self::Reset(e.to_string())
        }
    }

    pub(super) fn retryable(&self, on: &RetryOn, payload: &Payload) -> bool {
        match self {
            Self::ConnectFailed(_) => on.connect_failure,
            Self::NotDelivered(_) => on.connect_failure && payload.replayable(),
            Self::Reset(_) => on.reset && payload.replayable(),
            Self::TimedOut => on.timeout() && payload.replayable(),
            Self::Answer(r) => on.status(r.status().as_u16()) && payload.replayable(),
            Self::Overflow | Self::BadRequestBody(_) => false,
        }
    }

    /// What outlier detection makes of it; `None` when the endpoint was never tried.
    pub(super) fn verdict(&self) -> Option<Verdict> {
        Some(match self {
            Self::Answer(r) => match r.status().as_u16() {
                502..=504 => Verdict::GatewayError,
                500..=599 => Verdict::ServerError,
                _ => Verdict::Success,
            },
            Self::ConnectFailed(_) | Self::NotDelivered(_) | Self::Reset(_) | Self::TimedOut => {
                Verdict::GatewayError
            }
            Self::Overflow | Self::BadRequestBody(_) => return None,
        })
    }

    pub(super) fn into_response(self) -> Response<Body> {
        match self {
            Self::Answer(r) | Self::NotDelivered(r) => r,
            Self::ConnectFailed(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
            Self::Reset(e) => text(StatusCode::BAD_GATEWAY, format!("UpstreamError: {e}\n")),
            Self::TimedOut => text(
                StatusCode::GATEWAY_TIMEOUT,
                "UpstreamTimeout: no answer within perTryTimeout\n",
            ),
            Self::BadRequestBody(e) => crate::http::bad_request_body(&e),
            Self::Overflow => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "UpstreamOverflow: every connection to the service is busy and the queue is full\n",
            ),
        }
    }
}

/// Lowers a gauge when dropped (also when the attempt is cancelled by a timeout).
pub(super) struct GaugeGuard<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Why an upstream connection was not made: a stable reason and what happened.
#[derive(Debug, thiserror::Error)]
#[error("{reason}: {detail}")]
pub(super) struct ConnectError {
    /// `UpstreamConnect` (TCP), `UpstreamTimeout`, `UpstreamTls` or a verifier reason.
    pub(super) reason: &'static str,
    pub(super) detail: String,
}

impl ConnectError {
    pub(super) fn new(reason: &'static str, detail: impl std::fmt::Display) -> Self {
        Self {
            reason,
            detail: detail.to_string(),
        }
    }
}

/// Connects and handshakes with one endpoint, expecting the route's identities.
pub(super) async fn connect(
    tls: Arc<rustls::ClientConfig>,
    endpoint: &Endpoint,
    service: &Hostname,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
    let addr = endpoint.addr;
    // The SNI names the service: the peer's exported name through a gateway, else the
    // service's own hostname; the server sidecar refuses names it does not serve (domain
    // fronting), and SPIFFE verification does not depend on it.
    let sni = endpoint.sni.as_ref().unwrap_or(service).as_str().to_owned();
    let connect = async move {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| ConnectError::new("UpstreamConnect", e))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(sni).map_err(|e| ConnectError::new("UpstreamTls", e))?;
        tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| {
                let reason = e
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<rustls::Error>())
                    .and_then(meshfed_trust::VerifyError::from_rustls)
                    .map_or("UpstreamTls", |v| v.reason());
                ConnectError::new(reason, e)
            })
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::new(
            "UpstreamTimeout",
            format!("connecting to {addr}"),
        )),
    }
}

/// One attempt at one endpoint.
pub(super) async fn attempt(
    route: &Route,
    stats: &Stats,
    index: usize,
    head: &hyper::http::request::Parts,
    payload: &mut Payload,
    now: Instant,
) -> Outcome {
    let _load = InFlight::new(&route.load[index]);
    stats.upstream_active.inc();
    let _gauge = GaugeGuard(&stats.upstream_active);
    // The circuit breaker: a free connection, or a place in the bounded queue for one (HTTP/1.1:
    // a connection carries one request; HTTP/2 multiplexes one per endpoint).
    let _permit = match route.connections.try_acquire() {
        _ if route.protocol == HttpVersion::Http2 => None,
        Ok(p) => Some(p),
        Err(_) => {
            let max = usize::try_from(route.traffic.connection_pool.max_pending_requests)
                .unwrap_or(usize::MAX);
            let Some(_waiting) = InFlight::bounded(&route.pending, max) else {
                return Outcome::Overflow;
            };
            match route.connections.acquire().await {
                Ok(p) => Some(p),
                Err(_) => return Outcome::Overflow,
            }
        }
    };
    let pool = &route.pools[index];
    let run = async {
        let Some(body) = payload.take() else {
            return Outcome::Reset("the request body was already sent".into());
        };
        let mut req = Request::new(body);
        *req.method_mut() = head.method.clone();
        *req.headers_mut() = head.headers.clone();
        strip_hop_by_hop(req.headers_mut());
        set_target(&mut req, route.protocol, route.host.as_str(), &head.uri);
        // An idle (or the shared HTTP/2) connection first; a request it could not take goes on
        // a new one.
        let mut gate = pool.gate(route.protocol).await;
        if let Some(mut s) = pool.take(now) {
            drop(gate.take());
            match pool::send(&mut s, req).await {
                Ok(resp) => return answered(pool.keep(s, resp)),
                Err(SendError::NotSent(back, _)) => req = *back,
                Err(SendError::Broken(e)) => return Outcome::broken(&e),
            }
        }
        let connected = async {
            let tls = connect(route.tls.clone(), &route.endpoints[index], &route.host).await?;
            stats.handshake(Direction::Outbound, true);
            pool::handshake(tls, route.protocol)
                .await
                .map_err(|e| ConnectError::new("UpstreamConnect", e))
        };
        let mut s = match connected.await {
            Ok(s) => {
                pool.share(&s);
                drop(gate);
                s
            }
            Err(e) => {
                // Only a refused handshake is a handshake result; a refused TCP connect is not.
                if e.reason != "UpstreamConnect" {
                    stats.handshake(Direction::Outbound, false);
                }
                payload.restore(req.into_body());
                return Outcome::ConnectFailed(e.to_string());
            }
        };
        match pool::send(&mut s, req).await {
            Ok(resp) => answered(pool.keep(s, resp)),
            Err(SendError::NotSent(back, e)) => {
                payload.restore(back.into_body());
                Outcome::ConnectFailed(format!("UpstreamConnect: {e}"))
            }
            Err(SendError::Broken(e)) => Outcome::broken(&e),
        }
    };
    match route.traffic.retries.per_try_timeout {
        Some(t) => tokio::time::timeout(t, run)
            .await
            .unwrap_or(Outcome::TimedOut),
        None => run.await,
    }
}

/// Attempts until an answer that is not retried, the attempts are spent, or the budget is.
pub(super) async fn attempts(
    route: &Route,
    candidates: &[usize],
    stats: &Stats,
    head: hyper::http::request::Parts,
    mut payload: Payload,
    t0: Instant,
) -> Response<Body> {
    let retries = &route.traffic.retries;
    let mut retry_guard = None;
    let mut n = 0;
    // Endpoints tried before this attempt (filled only when there is a retry: no allocation
    // for the usual request).
    let mut tried: Vec<usize> = Vec::new();
    loop {
        // The request's start stands for now on the first attempt (one clock read less).
        let now = if n == 0 { t0 } else { Instant::now() };
        let i = choose(route, candidates, &tried, now);
        let outcome = attempt(route, stats, i, &head, &mut payload, now).await;
        if let (Some(o), Some(v)) = (&route.outliers, outcome.verdict())
            && o.record(i, v, Instant::now())
        {
            stats.ejections.inc();
            tracing::info!(service = %route.host, endpoint = %route.endpoints[i].addr, "outlier ejected");
        }
        if matches!(outcome, Outcome::Overflow) {
            stats.overflows.inc();
        }
        if n >= retries.attempts || !outcome.retryable(&retries.retry_on, &payload) {
            return outcome.into_response();
        }
        // A request that reached no app (refused, or not delivered by the endpoint's sidecar)
        // adds no load to any app when sent elsewhere: it is outside the retry budget, and goes
        // at once to an endpoint it has not tried, if there is one. That is what keeps
        // failover free of errors when every request finds the local endpoints down at once.
        let undelivered = matches!(
            outcome,
            Outcome::ConnectFailed(_) | Outcome::NotDelivered(_)
        );
        if retry_guard.is_none() && !undelivered {
            if !traffic::retry_allowed(
                route.active.load(Ordering::Relaxed),
                route.retrying.load(Ordering::Relaxed),
            ) {
                stats.retry_budget_exhausted.inc();
                return outcome.into_response();
            }
            retry_guard = Some(InFlight::new(&route.retrying));
        }
        drop(outcome);
        tried.push(i);
        n += 1;
        stats.retries.inc();
        let now = Instant::now();
        let elsewhere = candidates.iter().any(|&k| {
            !tried.contains(&k)
                && route.endpoints[k].healthy
                && route.outliers.as_ref().is_none_or(|o| o.available(k, now))
        });
        if !(undelivered && elsewhere) {
            tokio::time::sleep(traffic::backoff(n, fastrand::f64())).await;
        }
    }
}

pub(super) async fn outbound(
    routes: Shared<Vec<Arc<Route>>>,
    stats: Arc<Stats>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let t0 = Instant::now();
    if let Some(refused) = crate::http::refuse_ambiguous(&req) {
        stats.bad_requests.inc();
        return Ok(refused);
    }
    let routes = current(&routes);
    let name = host_of(&req);
    // Service names are ASCII and compared without case: no canonical copy is made unless the
    // name matches no route.
    let found = name.and_then(|n| {
        routes
            .iter()
            .find(|r| r.host.as_str().eq_ignore_ascii_case(n))
    });
    let Some(route) = found else {
        let Some(host) = name.and_then(|n| n.to_ascii_lowercase().parse::<Hostname>().ok()) else {
            return Ok(text(
                StatusCode::BAD_REQUEST,
                "NoHost: the request names no valid Host\n",
            ));
        };
        // Not counted per service: the name came from the client, so it is unbounded.
        return Ok(text(
            StatusCode::NOT_FOUND,
            format!("NoRoute: no service {host}\n"),
        ));
    };
    let resp = routed(route, &stats, req, t0).await;
    route.metrics.record(resp.status().as_u16(), t0.elapsed());
    Ok(resp)
}

/// An outbound request for a known service: its HTTP route and subset, faults, then attempts
/// within the route timeout. `t0` is when it came (moved on past any wait here).
pub(super) async fn routed(
    route: &Route,
    stats: &Stats,
    req: Request<Incoming>,
    mut t0: Instant,
) -> Response<Body> {
    let host = &route.host;
    let target = route.traffic.routing.decide(
        req.method().as_str(),
        req.uri().path(),
        |name| req.headers().get(name).and_then(|v| v.to_str().ok()),
        fastrand::u32(..100),
    );
    let candidates = match target {
        Target::All => &route.all,
        Target::Subset(name) => match route.subsets.get(name) {
            Some(c) => c,
            None => &Vec::new(),
        },
        Target::NoRoute => {
            return text(
                StatusCode::NOT_FOUND,
                format!("NoRouteMatched: no HTTP route of {host} matches this request\n"),
            );
        }
    };
    let fault = &route.traffic.fault;
    if let Some(d) = &fault.delay
        && d.share.hit(fastrand::u32(..Share::MILLION))
    {
        stats.fault_delays.inc();
        tokio::time::sleep(d.fixed_delay).await;
        t0 = Instant::now();
    }
    if let Some(a) = &fault.abort
        && a.share.hit(fastrand::u32(..Share::MILLION))
    {
        stats.fault_aborts.inc();
        return text(
            StatusCode::from_u16(a.http_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            format!("FaultInjected: abort by the traffic policy for {host}\n"),
        );
    }
    if candidates.is_empty() {
        let which = match target {
            Target::Subset(name) => format!("subset {name} of {host}"),
            _ => host.to_string(),
        };
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("NoHealthyEndpoint: {which} has no endpoints\n"),
        );
    }
    // The circuit breaker's request limit (`http2MaxRequests`): beyond it, 503 at once.
    let max = usize::try_from(route.traffic.connection_pool.max_requests).unwrap_or(usize::MAX);
    let Some(_active) = InFlight::bounded(&route.active, max) else {
        stats.overflows.inc();
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "UpstreamOverflow: {max} requests to {host} are in flight (http2MaxRequests)\n"
            ),
        );
    };
    let (mut head, body) = req.into_parts();
    // The app cannot speak for anyone: identity is added on the receiving side only.
    head.headers.remove(&CLIENT_ID_HEADER);
    let run = async {
        let replay = route.traffic.retries.attempts > 0
            && body
                .size_hint()
                .exact()
                .is_some_and(|n| n <= MAX_REPLAY_BODY);
        let payload = if body.is_end_stream() {
            Payload::Kept(Bytes::new())
        } else if replay {
            match body.collect().await {
                Ok(b) => {
                    t0 = Instant::now();
                    Payload::Kept(b.to_bytes())
                }
                Err(e) => return crate::http::bad_request_body(&e),
            }
        } else {
            Payload::Stream(Some(boxed(body)))
        };
        attempts(route, candidates, stats, head, payload, t0).await
    };
    match route.traffic.timeout {
        None => run.await,
        Some(t) => match tokio::time::timeout(t, run).await {
            Ok(r) => r,
            Err(_) => {
                stats.timeouts.inc();
                text(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("UpstreamTimeout: no answer within the route timeout of {t:?}\n"),
                )
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, host: Option<&str>) -> Request<Body> {
        let mut b = Request::get(uri);
        if let Some(h) = host {
            b = b.header(hyper::header::HOST, h);
        }
        b.body(
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn http1_gets_the_origin_form_and_a_host_http2_the_absolute_form_and_no_host() {
        let authority = "orders.shop.svc.cluster.local";
        // An absolute-form target from the app, over HTTP/1.1: origin form, Host added.
        let uri: hyper::Uri = "http://orders.shop.svc.cluster.local/a?b=1"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let mut req = request("/", None);
        set_target(&mut req, HttpVersion::Http1, authority, &uri);
        assert_eq!(req.uri().to_string(), "/a?b=1");
        assert_eq!(req.version(), hyper::Version::HTTP_11);
        assert_eq!(req.headers()[hyper::header::HOST], authority);
        // The app's own Host is kept.
        let uri: hyper::Uri = "/x".parse().unwrap_or_else(|e| panic!("{e}"));
        let mut req = request("/x", Some("orders:8080"));
        set_target(&mut req, HttpVersion::Http1, authority, &uri);
        assert_eq!(req.headers()[hyper::header::HOST], "orders:8080");
        // HTTP/2: the authority travels as :authority, never beside a Host header.
        let mut req = request("/x", Some("orders:8080"));
        set_target(&mut req, HttpVersion::Http2, authority, &uri);
        assert_eq!(
            req.uri().to_string(),
            "http://orders.shop.svc.cluster.local/x"
        );
        assert_eq!(req.version(), hyper::Version::HTTP_2);
        assert!(!req.headers().contains_key(hyper::header::HOST));
    }
}
