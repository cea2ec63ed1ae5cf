//! Route matching and weighted subsets on the outbound path, over real sockets and mTLS on
//! loopback: a header or a regex on the path sends requests to the canary subset, the rest are
//! split 80/20 by weight (within binomial bounds), an unmatched request gets 404, a subset
//! without endpoints 503, and an update moves the split.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;

use common::*;
use meshfed_core::routing::{
    Destination, HttpMatch, HttpRoute, Pattern, Routing, StringMatch, Subset,
};
use meshfed_core::traffic::TrafficPolicy;
use meshfed_proxy::sidecar::{Endpoint, Running};
use meshfed_trust::verify::Expect;

fn labeled(srv: &Running, version: &str) -> Endpoint {
    Endpoint {
        labels: [("version".to_owned(), version.to_owned())].into(),
        ..endpoint_of(srv)
    }
}

fn subset(name: &str) -> Subset {
    Subset {
        name: name.into(),
        labels: [("version".to_owned(), name.to_owned())].into(),
    }
}

fn to(subset: &str, weight: u32) -> Destination {
    Destination {
        subset: Some(subset.into()),
        weight,
    }
}

/// Canary (header `x-canary: 1`, or GET on `/v2/<letters>`) → v2; `/api…` → 80% v1, 20% v2;
/// `/gone` → v3, which has no endpoints; anything else matches no route.
fn routing(split: (u32, u32)) -> Routing {
    Routing {
        subsets: vec![subset("v1"), subset("v2"), subset("v3")],
        http: vec![
            HttpRoute {
                name: Some("canary".into()),
                matches: vec![
                    HttpMatch {
                        headers: [("x-canary".to_owned(), StringMatch::Exact("1".into()))].into(),
                        ..HttpMatch::default()
                    },
                    HttpMatch {
                        uri: Some(StringMatch::Regex(Pattern::new("/v2/[a-z]+").unwrap())),
                        method: Some(StringMatch::Exact("GET".into())),
                        ..HttpMatch::default()
                    },
                ],
                route: vec![to("v2", 100)],
            },
            HttpRoute {
                name: None,
                matches: vec![HttpMatch {
                    uri: Some(StringMatch::Prefix("/api".into())),
                    ..HttpMatch::default()
                }],
                route: vec![to("v1", split.0), to("v2", split.1)],
            },
            HttpRoute {
                name: None,
                matches: vec![HttpMatch {
                    uri: Some(StringMatch::Exact("/gone".into())),
                    ..HttpMatch::default()
                }],
                route: vec![to("v3", 100)],
            },
        ],
    }
}

/// Which instance answered `n` requests for `target`, with `extra` headers.
async fn served(
    c: &Running,
    method: &str,
    target: &str,
    extra: &str,
    n: usize,
) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let (status, body) = request(c.outbound.unwrap(), method, target, HOST, extra).await;
        let who = if status == 200 {
            body_json(&body)["instance"]
                .as_str()
                .unwrap_or("?")
                .to_owned()
        } else {
            status.to_string()
        };
        *seen.entry(who).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_match_by_header_path_and_method_and_split_by_weight() {
    let ca = alpha_ca();
    let (v1, t1) = echo_server(&ca, echo_config("echo-v1"), Expect::AnyKnownDomain, vec![]).await;
    let (v2, t2) = echo_server(&ca, echo_config("echo-v2"), Expect::AnyKnownDomain, vec![]).await;
    let endpoints = vec![labeled(&v1, "v1"), labeled(&v2, "v2")];
    let policy = |split| TrafficPolicy {
        routing: routing(split),
        ..TrafficPolicy::default()
    };
    let c = client_with(&ca, UI, endpoints.clone(), policy((80, 20))).await;

    // The header, or the regex with the method, picks the canary every time.
    let seen = served(&c, "GET", "/api/x", "x-canary: 1\r\n", 20).await;
    assert_eq!(seen, [("echo-v2".to_owned(), 20)].into());
    let seen = served(&c, "GET", "/v2/abc?q=1", "", 10).await;
    assert_eq!(
        seen,
        [("echo-v2".to_owned(), 10)].into(),
        "the query is not part of the match"
    );
    // The regex is anchored and the method must match: these fall through to no route.
    assert_eq!(
        served(&c, "GET", "/v2/abc/def", "", 3).await,
        [("404".to_owned(), 3)].into()
    );
    assert_eq!(
        served(&c, "POST", "/v2/abc", "", 3).await,
        [("404".to_owned(), 3)].into()
    );
    let (status, body) = request(c.outbound.unwrap(), "GET", "/nothing", HOST, "").await;
    assert_eq!(status, 404);
    assert!(body.starts_with("NoRouteMatched: "), "{body}");
    // A subset nobody carries: 503, at once.
    let (status, body) = request(c.outbound.unwrap(), "GET", "/gone", HOST, "").await;
    assert_eq!(status, 503);
    assert!(body.contains("subset v3"), "{body}");

    // 80/20 by weight, within six standard deviations of the binomial mean.
    let n = 400;
    let seen = served(&c, "GET", "/api/orders", "", n).await;
    let v2_hits = seen.get("echo-v2").copied().unwrap_or(0);
    assert_eq!(
        seen.get("echo-v1").copied().unwrap_or(0) + v2_hits,
        n,
        "{seen:?}"
    );
    let (mean, sd) = (n as f64 * 0.2, (n as f64 * 0.2 * 0.8).sqrt());
    assert!(
        (v2_hits as f64 - mean).abs() <= 6.0 * sd,
        "{v2_hits} of {n} to v2"
    );

    // An update moves all of /api to v2.
    c.update(&client_config(endpoints, policy((0, 100))))
        .unwrap();
    assert_eq!(
        served(&c, "GET", "/api/x", "", 20).await,
        [("echo-v2".to_owned(), 20)].into()
    );
    drop((t1, t2));
}
