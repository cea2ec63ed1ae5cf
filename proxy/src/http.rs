//! Small HTTP helpers shared by the listeners.

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONNECTION, HeaderMap, HeaderName, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use hyper::{Request, Response, StatusCode};

/// The body type every handler returns.
pub type Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// A plain-text response with `status`.
pub fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let body: String = msg.into();
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    r
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut r = text(status, value.to_string());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Hop-by-hop headers always removed; `TE` is removed unless it says only `trailers`.
const HOP_BY_HOP: [HeaderName; 6] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == TE || HOP_BY_HOP.contains(name)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) never forwarded, plus any header `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names instead of a lookup for each.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| HeaderName::from_bytes(s.trim().as_bytes()).ok())
            .collect();
        for h in named {
            headers.remove(h);
        }
    }
    // `TE: trailers` is the one TE value that may cross (RFC 9113 §8.2.2); gRPC needs it.
    let trailers = headers
        .get_all(TE)
        .iter()
        .all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
    if !trailers {
        headers.remove(TE);
    }
}

/// Converts an incoming body into the boxed body type.
pub fn boxed(b: Incoming) -> Body {
    b.boxed()
}

/// Converts a request with an incoming body.
pub fn boxed_request(r: Request<Incoming>) -> Request<Body> {
    r.map(boxed)
}

/// The answer to a request the sidecar will not route because it could be read two ways:
/// more than one `Host` header (which one names the service? RFC 9112 §3.2), or a field value
/// that starts or ends with whitespace — malformed in HTTP/2 (RFC 9113 §8.2.1), and read
/// trimmed by an HTTP/1.1 upstream (HTTP/1.1 parsers trim it already, so only HTTP/2 requests
/// can carry one). 400, with the reason first in the body.
pub fn refuse_ambiguous<B>(req: &hyper::Request<B>) -> Option<hyper::Response<Body>> {
    let mut hosts = req.headers().get_all(hyper::header::HOST).iter();
    hosts.next();
    if hosts.next().is_some() {
        return Some(text(
            hyper::StatusCode::BAD_REQUEST,
            "DuplicateHost: the request has more than one Host header\n",
        ));
    }
    if req.version() != hyper::Version::HTTP_2 {
        return None;
    }
    let padded = |v: &[u8]| {
        matches!(v.first(), Some(b' ' | b'\t')) || matches!(v.last(), Some(b' ' | b'\t'))
    };
    req.headers()
        .iter()
        .find(|(_, v)| padded(v.as_bytes()))
        .map(|(name, _)| {
            text(
                hyper::StatusCode::BAD_REQUEST,
                format!("InvalidFieldValue: the value of {name} starts or ends with whitespace\n"),
            )
        })
}

/// The answer to a request whose own body broke (bad chunked framing, a reset): not the
/// upstream's fault; 400, and the connection closed.
pub fn bad_request_body(e: &dyn std::fmt::Display) -> hyper::Response<Body> {
    let mut r = text(
        hyper::StatusCode::BAD_REQUEST,
        format!("BadRequestBody: {e}\n"),
    );
    r.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    r
}
