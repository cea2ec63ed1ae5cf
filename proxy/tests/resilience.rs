//! Resilience on the outbound path, over real sockets and mTLS on loopback: retries recover
//! from failing endpoints (and connection failures by default), the route timeout and the
//! per-try timeout hold, and injected faults hit the configured share of requests.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::*;
use meshfed_core::traffic::{
    Abort, ConnectionPool, Delay, LoadBalancer, OutlierDetection, Retries, RetryOn, Share,
    TrafficPolicy,
};
use meshfed_proxy::echo::EchoConfig;
use meshfed_proxy::sidecar::{Endpoint, OutboundService, Running};
use meshfed_trust::CertificateAuthority;
use meshfed_trust::verify::Expect;

fn ca() -> CertificateAuthority {
    alpha_ca()
}

async fn echo(ca: &CertificateAuthority, cfg: EchoConfig) -> (Endpoint, Running) {
    let (srv, task) = echo_server(ca, cfg, Expect::AnyKnownDomain, vec![]).await;
    // The echo task lives as long as the test's runtime.
    std::mem::forget(task);
    (endpoint_of(&srv), srv)
}

/// An endpoint answering every request with 503, and a healthy one.
async fn bad_and_good(ca: &CertificateAuthority) -> ((Endpoint, Running), (Endpoint, Running)) {
    let bad = EchoConfig {
        status: 503,
        ..echo_config("bad")
    };
    (echo(ca, bad).await, echo(ca, echo_config("good")).await)
}

fn retries(attempts: u32, on: &str) -> Retries {
    Retries {
        attempts,
        per_try_timeout: None,
        retry_on: RetryOn::parse(on).unwrap(),
    }
}

/// Sends `n` requests; returns how many got each status.
async fn statuses(c: &Running, n: usize) -> std::collections::BTreeMap<u16, usize> {
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..n {
        let (status, _) = get(c.outbound.unwrap(), HOST, "").await;
        *seen.entry(status).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_recover_from_a_failing_endpoint() {
    let ca = ca();
    let ((bad, _b), (good, _g)) = bad_and_good(&ca).await;
    let eps = vec![bad, good];

    // Without retries of 5xx, round robin sends every other request to the failing endpoint.
    let plain = client(&ca, UI, eps.clone()).await;
    let seen = statuses(&plain, 10).await;
    assert_eq!(seen.get(&503), Some(&5), "{seen:?}");
    assert_eq!(plain.stats.retries.get(), 0);

    // With them, every request ends at the healthy endpoint.
    let policy = TrafficPolicy {
        retries: retries(2, "5xx"),
        ..TrafficPolicy::default()
    };
    let retrying = client_with(&ca, UI, eps.clone(), policy).await;
    for _ in 0..10 {
        let (status, body) = post(retrying.outbound.unwrap(), b"hello").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body_json(&body)["instance"], "good", "{body}");
    }
    let n = retrying.stats.retries.get();
    assert!((5..=10).contains(&n), "{n} retries");

    // An endpoint failing a fifth of its requests at random looks healthy with retries:
    // all 30 succeed unless one request fails 11 times in a row (p ≈ 6e-7 for the run).
    let (flaky, _f) = echo(
        &ca,
        EchoConfig {
            failure: Share::from_percent(20.0).unwrap(),
            ..echo_config("flaky")
        },
    )
    .await;
    let policy = TrafficPolicy {
        retries: retries(10, "5xx"),
        ..TrafficPolicy::default()
    };
    let c = client_with(&ca, UI, vec![flaky], policy).await;
    let seen = statuses(&c, 30).await;
    assert_eq!(seen.get(&200), Some(&30), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_failures_are_retried_by_default() {
    let ca = ca();
    let (good, _g) = echo(&ca, echo_config("good")).await;
    // A loopback port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dead = Endpoint {
        addr: closed,
        identity: ECHO.parse().unwrap(),
        labels: Default::default(),
        sni: None,
        priority: 0,
        healthy: true,
    };
    let c = client(&ca, UI, vec![dead.clone(), good]).await;
    let seen = statuses(&c, 6).await;
    assert_eq!(seen.get(&200), Some(&6), "{seen:?}");
    assert!(c.stats.retries.get() >= 3);
    // With retries off, the failure shows.
    let off = TrafficPolicy {
        retries: retries(0, "connect-failure"),
        ..TrafficPolicy::default()
    };
    let c = client_with(&ca, UI, vec![dead], off).await;
    let (status, body) = get(c.outbound.unwrap(), HOST, "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("UpstreamConnect"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_bound_slow_endpoints() {
    let ca = ca();
    let slow = || EchoConfig {
        latency: Duration::from_secs(5),
        ..echo_config("slow")
    };
    let (slow_ep, _s) = echo(&ca, slow()).await;
    let (fast_ep, _f) = echo(&ca, echo_config("fast")).await;

    // The route timeout answers 504 long before the endpoint would.
    let policy = TrafficPolicy {
        timeout: Some(Duration::from_millis(300)),
        ..TrafficPolicy::default()
    };
    let c = client_with(&ca, UI, vec![slow_ep.clone()], policy).await;
    // (The answer names the timeout: it came before the endpoint's, whatever the machine's
    // speed.)
    let (status, body) = get(c.outbound.unwrap(), HOST, "").await;
    assert_eq!(status, 504, "{body}");
    assert!(body.starts_with("UpstreamTimeout"), "{body}");
    assert_eq!(c.stats.timeouts.get(), 1);

    // A per-try timeout moves on to the next endpoint.
    let policy = TrafficPolicy {
        retries: Retries {
            per_try_timeout: Some(Duration::from_millis(300)),
            ..retries(1, "gateway-error")
        },
        ..TrafficPolicy::default()
    };
    let c = client_with(&ca, UI, vec![slow_ep, fast_ep], policy).await;
    for _ in 0..2 {
        let (status, body) = get(c.outbound.unwrap(), HOST, "").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body_json(&body)["instance"], "fast", "{body}");
    }
    // Round robin starts each request at the slow endpoint again (no outlier detection here).
    assert_eq!(c.stats.retries.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_faults_hit_their_share() {
    let ca = ca();
    let (ep, _e) = echo(&ca, echo_config("echo-1")).await;
    let n = 400;
    let policy = TrafficPolicy {
        fault: meshfed_core::traffic::Fault {
            abort: Some(Abort {
                share: Share::from_percent(30.0).unwrap(),
                http_status: 418,
            }),
            delay: Some(Delay {
                share: Share::from_percent(50.0).unwrap(),
                fixed_delay: Duration::from_millis(1),
            }),
        },
        ..TrafficPolicy::default()
    };
    let c = client_with(&ca, UI, vec![ep.clone()], policy).await;
    let seen = statuses(&c, n).await;
    let aborted = seen.get(&418).copied().unwrap_or(0);
    assert_eq!(
        aborted + seen.get(&200).copied().unwrap_or(0),
        n,
        "{seen:?}"
    );
    // Binomial bounds, six standard deviations wide: a false failure is practically impossible.
    let within = |hits: usize, p: f64| {
        let mean = n as f64 * p;
        let sd = (n as f64 * p * (1.0 - p)).sqrt();
        (hits as f64 - mean).abs() <= 6.0 * sd
    };
    assert!(within(aborted, 0.3), "{aborted} of {n} aborted");
    let delayed = c.stats.fault_delays.get() as usize;
    assert!(within(delayed, 0.5), "{delayed} of {n} delayed");
    assert_eq!(c.stats.fault_aborts.get() as usize, aborted);

    // A 100% delay delays every request by at least the fixed delay.
    let policy = TrafficPolicy {
        fault: meshfed_core::traffic::Fault {
            delay: Some(Delay {
                share: Share::from_percent(100.0).unwrap(),
                fixed_delay: Duration::from_millis(200),
            }),
            abort: None,
        },
        ..TrafficPolicy::default()
    };
    let c = client_with(&ca, UI, vec![ep], policy).await;
    let t0 = Instant::now();
    let (status, _) = get(c.outbound.unwrap(), HOST, "").await;
    assert_eq!(status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_a_failing_endpoint_and_readmits_it() {
    let ca = ca();
    let ((bad, _b), (good, _g)) = bad_and_good(&ca).await;
    let base = Duration::from_secs(2);
    let policy = TrafficPolicy {
        retries: retries(0, "connect-failure"),
        outlier_detection: Some(OutlierDetection {
            consecutive_5xx_errors: 2,
            consecutive_gateway_errors: 0,
            base_ejection_time: base,
            max_ejection_percent: 50,
        }),
        ..TrafficPolicy::default()
    };
    let c = client_with(&ca, UI, vec![bad.clone(), good.clone()], policy.clone()).await;
    // Round robin: bad, good, bad → the second 503 in a row ejects it.
    let seen = statuses(&c, 3).await;
    assert_eq!(seen.get(&503), Some(&2), "{seen:?}");
    assert_eq!(c.stats.ejections.get(), 1);
    let ejected_at = Instant::now();
    // An update that leaves this service unchanged keeps its state, ejection included.
    let mut cfg = client_config(vec![bad, good], policy);
    cfg.services.push(OutboundService {
        host: "other.shop.svc.cluster.local".parse().unwrap(),
        endpoints: vec![],
        traffic: TrafficPolicy::default(),
        protocol: meshfed_proxy::sidecar::HttpVersion::Http1,
    });
    c.update(&cfg).unwrap();
    // While ejected, only the healthy endpoint answers.
    let seen = statuses(&c, 10).await;
    if ejected_at.elapsed() < base {
        assert_eq!(seen.get(&200), Some(&10), "{seen:?}");
    }
    // Once the ejection ends it is tried again (and fails again).
    tokio::time::sleep(base.saturating_sub(ejected_at.elapsed()) + Duration::from_millis(100))
        .await;
    let seen = statuses(&c, 2).await;
    assert_eq!(seen.get(&503), Some(&1), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_breaker_refuses_overflow_fast() {
    let ca = ca();
    let (slow, _s) = echo(
        &ca,
        EchoConfig {
            latency: Duration::from_secs(2),
            ..echo_config("slow")
        },
    )
    .await;
    let policy = TrafficPolicy {
        connection_pool: ConnectionPool {
            max_connections: 1,
            max_pending_requests: 1,
            ..ConnectionPool::default()
        },
        ..TrafficPolicy::default()
    };
    let c = client_with(&ca, UI, vec![slow.clone()], policy).await;
    // Six at once: one holds the only connection, one waits for it, four are refused at once.
    six_at_once(&c, "every connection").await;
    // The request limit (`http2MaxRequests`), with connections to spare: two in flight, four
    // refused at once.
    let policy = TrafficPolicy {
        connection_pool: ConnectionPool {
            max_requests: 2,
            ..ConnectionPool::default()
        },
        ..TrafficPolicy::default()
    };
    let c = client_with(&ca, UI, vec![slow], policy).await;
    six_at_once(&c, "http2MaxRequests").await;
}

/// Six concurrent calls to a 2 s endpoint: two answered, four refused fast with a message
/// containing `why`, all counted.
async fn six_at_once(c: &Running, why: &str) {
    let addr = c.outbound.unwrap();
    let calls: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(async move {
                let t0 = Instant::now();
                let (status, body) = get(addr, HOST, "").await;
                (status, body, t0.elapsed())
            })
        })
        .collect();
    let mut ok = 0;
    for call in calls {
        let (status, body, took) = call.await.unwrap();
        match status {
            200 => ok += 1,
            503 => {
                assert!(
                    body.starts_with("UpstreamOverflow") && body.contains(why),
                    "{body}"
                );
                // Refused without waiting for the 2 s the endpoint takes.
                assert!(took < Duration::from_secs(2), "overflow took {took:?}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(ok, 2);
    assert_eq!(c.stats.overflows.get(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_steers_around_a_busy_endpoint() {
    let ca = ca();
    let (slow, _s) = echo(
        &ca,
        EchoConfig {
            latency: Duration::from_secs(3),
            ..echo_config("slow")
        },
    )
    .await;
    let (fast, _f) = echo(&ca, echo_config("fast")).await;
    let policy = TrafficPolicy {
        load_balancer: LoadBalancer::LeastRequest,
        ..TrafficPolicy::default()
    };
    let c = client_with(&ca, UI, vec![slow, fast], policy).await;
    let addr = c.outbound.unwrap();
    // Both idle: the tie goes to round robin's first choice, the slow endpoint.
    let held = tokio::spawn(async move { get(addr, HOST, "").await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.stats.upstream_active.get() < 1 {
        assert!(Instant::now() < deadline, "the first request never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // While it is busy, every request goes to the idle endpoint (round robin would send
    // every other one to the slow endpoint).
    for _ in 0..6 {
        let (status, body) = get(addr, HOST, "").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body_json(&body)["instance"], "fast", "{body}");
    }
    let (status, body) = held.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body_json(&body)["instance"], "slow", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_arrive_whole_when_replayed_or_streamed() {
    let ca = ca();
    let ((bad, _b), (good, _g)) = bad_and_good(&ca).await;
    let policy = TrafficPolicy {
        retries: retries(2, "5xx"),
        load_balancer: LoadBalancer::RoundRobin,
        ..TrafficPolicy::default()
    };
    let c = client_with(&ca, UI, vec![bad.clone(), good.clone()], policy.clone()).await;
    let addr = c.outbound.unwrap();
    // A small body is kept, so the request is replayed whole at the healthy endpoint.
    let small = vec![b'x'; 1024];
    for _ in 0..2 {
        let (status, body) = post(addr, &small).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body_json(&body)["received"], 1024, "{body}");
    }
    // A body over the replay limit streams: whole at a healthy endpoint...
    let big = vec![b'y'; 100 * 1024];
    let only_good = client_with(&ca, UI, vec![good], policy.clone()).await;
    let (status, body) = post(only_good.outbound.unwrap(), &big).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body_json(&body)["received"], 100 * 1024, "{body}");
    // ...and, once sent, never replayed: the failing endpoint's answer stands.
    let only_bad = client_with(&ca, UI, vec![bad], policy).await;
    let (status, _) = post(only_bad.outbound.unwrap(), &big).await;
    assert_eq!(status, 503);
    assert_eq!(only_bad.stats.retries.get(), 0);
}

/// An app that reads each request and closes the connection without answering — what a
/// receiving sidecar sees when its app dies as a request arrives; with `first_answered`, it
/// answers the first request on each connection and dies on the next: an app dying while
/// the sidecar holds idle connections to it.
async fn dying_app(first_answered: bool) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut seen = Vec::new();
                let answers: &[bool] = if first_answered {
                    &[true, false]
                } else {
                    &[false]
                };
                for answered in answers {
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match c.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.clear();
                    if *answered {
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if c.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Twelve GETs through a client with `dying` and a healthy endpoint: all answered 200.
async fn gets_go_elsewhere(ca: &meshfed_trust::CertificateAuthority, dying: &Running) {
    let (healthy, _e) = domain_server(ca, "echo-1").await;
    let cli = client(ca, UI, vec![endpoint_of(dying), endpoint_of(&healthy)]).await;
    for i in 0..12 {
        let (status, body) = get(cli.outbound.unwrap(), HOST, "").await;
        assert_eq!(status, 200, "request {i}: {body}");
    }
}

/// A GET the receiving sidecar wrote on a reused app connection that then broke is marked
/// not-delivered (it is safe to repeat), so the calling sidecar sends it to another endpoint:
/// no request fails while an app dies with idle connections open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_lost_on_a_dying_apps_reused_connection_goes_elsewhere() {
    let ca = alpha_ca();
    let dying = meshfed_proxy::sidecar::start(
        server_config(dying_app(true).await),
        resolver(&ca, ECHO),
        bundles(&ca),
    )
    .await
    .unwrap();
    gets_go_elsewhere(&ca, &dying).await;
}

/// The same on a new app connection: a GET goes elsewhere; a POST, which the app may have
/// acted on, is answered 502 and not repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_lost_on_a_new_connection_to_a_dying_app_goes_elsewhere() {
    let ca = alpha_ca();
    let dying = meshfed_proxy::sidecar::start(
        server_config(dying_app(false).await),
        resolver(&ca, ECHO),
        bundles(&ca),
    )
    .await
    .unwrap();
    gets_go_elsewhere(&ca, &dying).await;
    let only_dying = client(&ca, UI, vec![endpoint_of(&dying)]).await;
    let (status, body) = post(only_dying.outbound.unwrap(), b"charge once").await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("AppError"), "{body}");
    assert_eq!(only_dying.stats.retries.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_that_fails_to_start_leaves_no_port_bound() {
    let ca = ca();
    let outbound = meshfed_test_support::free_addr("127.0.0.1");
    // The inbound port is someone else's: the start fails after the outbound listener bound.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    let cfg = meshfed_proxy::sidecar::SidecarConfig {
        outbound: Some(outbound),
        inbound: Some(busy),
        ..server_config(any())
    };
    let Err(e) =
        meshfed_proxy::sidecar::start(cfg.clone(), resolver(&ca, ECHO), bundles(&ca)).await
    else {
        panic!("started on a taken port")
    };
    assert!(
        matches!(e, meshfed_proxy::sidecar::SidecarError::Bind(a, _) if a == busy),
        "{e}"
    );
    // No app for the inbound listener: refused after the outbound listener bound, too.
    let no_app = meshfed_proxy::sidecar::SidecarConfig {
        inbound: Some(any()),
        app: None,
        ..cfg.clone()
    };
    let Err(e) = meshfed_proxy::sidecar::start(no_app, resolver(&ca, ECHO), bundles(&ca)).await
    else {
        panic!("started an inbound listener without an app")
    };
    assert!(
        matches!(e, meshfed_proxy::sidecar::SidecarError::NoApp),
        "{e}"
    );
    // The next configuration binds the same outbound port.
    let good = meshfed_proxy::sidecar::SidecarConfig {
        inbound: Some(any()),
        ..cfg
    };
    let mut started = None;
    for _ in 0..50 {
        match meshfed_proxy::sidecar::start(good.clone(), resolver(&ca, ECHO), bundles(&ca)).await {
            Ok(r) => {
                started = Some(r);
                break;
            }
            // An aborted accept loop lets go of its listener when its task is next polled.
            Err(meshfed_proxy::sidecar::SidecarError::Bind(a, _)) if a == outbound => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let r = started.expect("the outbound port stayed bound after the refused starts");
    assert_eq!(r.outbound, Some(outbound));
}
