//! Outbound routes: a service's endpoints with their TLS client, load balancing, priority
//! failover, outlier ejection and the probes that readmit ejected endpoints.

use super::*;

#[derive(Debug)]
pub(super) struct Route {
    pub(super) host: Hostname,
    /// Requests and latency, labelled with `host`.
    pub(super) metrics: ServiceMetrics,
    pub(super) endpoints: Vec<Endpoint>,
    pub(super) next: AtomicUsize,
    pub(super) tls: Arc<rustls::ClientConfig>,
    pub(super) traffic: TrafficPolicy,
    pub(super) protocol: HttpVersion,
    /// Requests in flight, and those of them retrying (the retry budget's inputs).
    pub(super) active: AtomicUsize,
    pub(super) retrying: AtomicUsize,
    /// One permit per upstream connection (`connectionPool.tcp.maxConnections`).
    pub(super) connections: tokio::sync::Semaphore,
    /// Attempts waiting for a permit.
    pub(super) pending: AtomicUsize,
    /// Attempts in flight per endpoint (least-request's load).
    pub(super) load: Vec<AtomicUsize>,
    /// Idle connections per endpoint.
    pub(super) pools: Vec<Arc<Pool>>,
    pub(super) outliers: Option<Outliers>,
    /// Endpoints in more than one priority (locality failover) or marked unhealthy.
    pub(super) prioritized: bool,
    /// Every endpoint's index, and the indices of each subset's endpoints.
    pub(super) all: Vec<usize>,
    pub(super) subsets: BTreeMap<String, Vec<usize>>,
}

/// Counts one in-flight item for as long as it lives.
pub(super) struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    pub(super) fn new(c: &'a AtomicUsize) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Self(c)
    }

    /// Counts one more unless `c` is already at `max`.
    pub(super) fn bounded(c: &'a AtomicUsize, max: usize) -> Option<Self> {
        c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Self(c))
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The outbound routes of `cfg`, each with its own TLS client expecting the service's
/// identities.
pub(super) fn build_routes(
    cfg: &SidecarConfig,
    svid: &Arc<SvidResolver>,
    bundles: &SharedBundles,
    old: &[Arc<Route>],
    stats: &Stats,
) -> Result<Vec<Arc<Route>>, SidecarError> {
    let mut routes = Vec::new();
    for s in &cfg.services {
        // An unchanged service keeps its route: idle connections, outlier state, counters.
        if let Some(r) = old.iter().find(|r| {
            r.host == s.host
                && r.endpoints == s.endpoints
                && r.traffic == s.traffic
                && r.protocol == s.protocol
        }) {
            routes.push(r.clone());
            continue;
        }
        let alpn = match s.protocol {
            HttpVersion::Http1 => ALPN_HTTP1,
            HttpVersion::Http2 => ALPN_H2,
        };
        let tls = upstream_tls(svid, bundles, &s.endpoints, alpn.to_vec())?;
        routes.push(Arc::new(Route {
            host: s.host.clone(),
            metrics: stats.service(Direction::Outbound, s.host.as_str()),
            endpoints: s.endpoints.clone(),
            next: AtomicUsize::new(0),
            tls: Arc::new(tls),
            traffic: s.traffic.clone(),
            protocol: s.protocol,
            active: AtomicUsize::new(0),
            retrying: AtomicUsize::new(0),
            connections: tokio::sync::Semaphore::new(
                usize::try_from(s.traffic.connection_pool.max_connections)
                    .unwrap_or(usize::MAX)
                    .min(tokio::sync::Semaphore::MAX_PERMITS),
            ),
            pending: AtomicUsize::new(0),
            load: s.endpoints.iter().map(|_| AtomicUsize::new(0)).collect(),
            pools: s.endpoints.iter().map(|_| Arc::default()).collect(),
            outliers: outlier_detection(s).map(|o| Outliers::new(o, s.endpoints.len())),
            prioritized: prioritized(&s.endpoints),
            all: (0..s.endpoints.len()).collect(),
            subsets: s
                .traffic
                .routing
                .subsets
                .iter()
                .map(|sub| {
                    let members = (0..s.endpoints.len())
                        .filter(|&i| sub.selects(&s.endpoints[i].labels))
                        .collect();
                    (sub.name.clone(), members)
                })
                .collect(),
        }));
    }
    for r in &routes {
        // A new route with failover groups gets its prober (a kept route keeps its own).
        if r.prioritized && r.outliers.is_some() && !old.iter().any(|o| Arc::ptr_eq(o, r)) {
            tokio::spawn(probe_ejected(Arc::downgrade(r)));
        }
    }
    Ok(routes)
}

pub(super) fn prioritized(endpoints: &[Endpoint]) -> bool {
    endpoints
        .iter()
        .any(|e| e.priority != endpoints[0].priority || !e.healthy)
}

/// The service's outlier detection: its own, or — when it has failover priorities and none is
/// configured — one that lets failover work without tuning (Istio needs it set by hand):
/// three consecutive gateway errors (refused, not delivered, 502–504, timeouts) or five 5xx
/// eject for 5 s (growing with each ejection), and every endpoint but the last may go.
pub(super) fn outlier_detection(s: &OutboundService) -> Option<OutlierDetection> {
    s.traffic.outlier_detection.clone().or_else(|| {
        prioritized(&s.endpoints).then(|| OutlierDetection {
            consecutive_5xx_errors: 5,
            consecutive_gateway_errors: 3,
            base_ejection_time: Duration::from_secs(5),
            max_ejection_percent: 100,
        })
    })
}

/// The endpoint for the next attempt among `candidates`: a priority by Envoy's priority load
/// (`core::failover`: each takes `min(1, 1.4 × healthy share)` of what the better ones
/// left), then the load balancer within it. Healthy means configured healthy, not ejected, and — on a retry — not
/// tried already; when nothing is, the best priority's endpoints are used as they are.
pub(super) fn choose(route: &Route, candidates: &[usize], tried: &[usize], now: Instant) -> usize {
    let ep = &route.endpoints;
    let not_ejected = |i: usize| route.outliers.as_ref().is_none_or(|o| o.available(i, now));
    let usable = |i: usize| ep[i].healthy && not_ejected(i) && !tried.contains(&i);
    let pick = |members: &[usize], ok: &dyn Fn(usize) -> bool| {
        members[route.traffic.load_balancer.pick(
            members.len(),
            route.next.fetch_add(1, Ordering::Relaxed),
            fastrand::usize(..),
            |k| ok(members[k]),
            |k| route.load[members[k]].load(Ordering::Relaxed),
        )]
    };
    if !route.prioritized {
        return pick(candidates, &usable);
    }
    let mut levels: Vec<u8> = candidates.iter().map(|&i| ep[i].priority).collect();
    levels.sort_unstable();
    levels.dedup();
    let members = |p: u8| -> Vec<usize> {
        candidates
            .iter()
            .copied()
            .filter(|&i| ep[i].priority == p)
            .collect()
    };
    let groups: Vec<(usize, usize)> = levels
        .iter()
        .map(|&p| {
            let m = members(p);
            (m.iter().filter(|&&i| usable(i)).count(), m.len())
        })
        .collect();
    let loads = meshfed_core::failover::priority_load(&groups);
    let Some(g) = meshfed_core::failover::pick_group(&loads, fastrand::f64()) else {
        // Nothing usable anywhere: the best priority as it is.
        return pick(&members(levels[0]), &not_ejected);
    };
    let level = levels[g];
    pick(&members(level), &usable)
}

/// How often a calling sidecar probes its ejected failover endpoints.
pub(super) const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Probes the ejected endpoints of a service with failover groups every second and readmits
/// those whose sidecar says their app is ready again, so traffic fails back as soon as the
/// local endpoints recover rather than when a (growing) ejection ends. Ends with the route.
pub(super) async fn probe_ejected(route: std::sync::Weak<Route>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(r) = route.upgrade() else { return };
        let Some(outliers) = &r.outliers else { return };
        let now = Instant::now();
        let ejected: Vec<usize> = (0..r.endpoints.len())
            .filter(|&i| !outliers.available(i, now))
            .collect();
        for i in ejected {
            if probe(&r, i).await {
                outliers.readmit(i, Instant::now());
                tracing::info!(service = %r.host, endpoint = %r.endpoints[i].addr, "readmitted: ready again");
            }
        }
    }
}

/// True when endpoint `i`'s sidecar answers [`READY_PATH`] with 200.
pub(super) async fn probe(route: &Route, i: usize) -> bool {
    let run = async {
        let tls = connect(route.tls.clone(), &route.endpoints[i], &route.host)
            .await
            .ok()?;
        let mut conn = pool::handshake(tls, route.protocol).await.ok()?;
        let mut req = Request::new(Empty::new().map_err(|n| match n {}).boxed());
        let uri: hyper::Uri = READY_PATH.parse().ok()?;
        set_target(&mut req, route.protocol, route.host.as_str(), &uri);
        let resp = pool::send(&mut conn, req).await.ok()?;
        Some(resp.status() == StatusCode::OK)
    };
    tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use meshfed_trust::TrustBundleSet;
    use meshfed_trust::ca::CertificateAuthority;

    use super::*;

    fn endpoint(port: u16, priority: u8, healthy: bool) -> Endpoint {
        Endpoint {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            identity: SpiffeId::parse_workload("spiffe://alpha.local/ns/shop/sa/orders")
                .unwrap_or_else(|e| panic!("{e}")),
            labels: BTreeMap::new(),
            sni: None,
            priority,
            healthy,
        }
    }

    fn service(endpoints: Vec<Endpoint>) -> OutboundService {
        OutboundService {
            host: "orders.shop.svc.cluster.local"
                .parse()
                .unwrap_or_else(|e| panic!("{e:?}")),
            endpoints,
            traffic: TrafficPolicy::default(),
            protocol: HttpVersion::Http1,
        }
    }

    fn config(services: Vec<OutboundService>) -> SidecarConfig {
        SidecarConfig {
            outbound: None,
            inbound: None,
            app: None,
            app_protocol: HttpVersion::Http1,
            allow: Expect::Ids(BTreeSet::new()),
            services,
            policies: Vec::new(),
            service: "shop/client".into(),
            admin: None,
            tcp: Vec::new(),
            tcp_ports: Vec::new(),
            names: Vec::new(),
            idle_timeout: crate::idle::IDLE_TIMEOUT,
        }
    }

    /// Routes for `services`, with a real SVID and bundle (the TLS client is built).
    fn routes(services: Vec<OutboundService>, old: &[Arc<Route>]) -> Vec<Arc<Route>> {
        let td = "alpha.local".parse().unwrap_or_else(|e| panic!("{e:?}"));
        let ca = CertificateAuthority::new(td, SystemTime::now()).unwrap_or_else(|e| panic!("{e}"));
        let id = SpiffeId::parse_workload("spiffe://alpha.local/ns/shop/sa/client")
            .unwrap_or_else(|e| panic!("{e}"));
        let svid = ca
            .issue(&id, Duration::from_secs(3600), SystemTime::now())
            .unwrap_or_else(|e| panic!("{e}"));
        let resolver = Arc::new(
            SvidResolver::new(&svid, verify::provider()).unwrap_or_else(|e| panic!("{e}")),
        );
        let mut set = TrustBundleSet::new();
        set.insert(ca.current_bundle().unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
        build_routes(
            &config(services),
            &resolver,
            &verify::shared(set),
            old,
            &Stats::new(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn an_unchanged_service_keeps_its_route_and_a_changed_one_is_rebuilt() {
        let first = routes(vec![service(vec![endpoint(1, 0, true)])], &[]);
        let same = routes(vec![service(vec![endpoint(1, 0, true)])], &first);
        assert!(
            Arc::ptr_eq(&first[0], &same[0]),
            "its pools and outlier state stay"
        );
        let moved = routes(vec![service(vec![endpoint(2, 0, true)])], &first);
        assert!(!Arc::ptr_eq(&first[0], &moved[0]));
        assert!(!moved[0].prioritized && moved[0].outliers.is_none());
    }

    #[tokio::test]
    async fn traffic_stays_local_while_healthy_and_spills_to_the_next_priority_when_not() {
        // Two local endpoints, one at the peer.
        let eps = vec![
            endpoint(1, 0, true),
            endpoint(2, 0, true),
            endpoint(3, 1, true),
        ];
        let r = routes(vec![service(eps)], &[]);
        let route = &r[0];
        assert!(route.prioritized, "failover groups");
        assert!(
            route.outliers.is_some(),
            "failover gets outlier detection by default"
        );
        let now = Instant::now();
        for _ in 0..50 {
            assert_ne!(
                choose(route, &route.all, &[], now),
                2,
                "the peer takes nothing"
            );
        }
        // Both local endpoints tried (a retry): only the peer is left.
        assert_eq!(choose(route, &route.all, &[0, 1], now), 2);
        // A route whose local endpoints say they serve nothing goes to the peer.
        let down = routes(
            vec![service(vec![endpoint(1, 0, false), endpoint(3, 1, true)])],
            &[],
        );
        for _ in 0..20 {
            assert_eq!(choose(&down[0], &down[0].all, &[], now), 1);
        }
        // Nothing usable anywhere: the best priority as it is.
        assert_eq!(choose(&down[0], &down[0].all, &[1], now), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_local_endpoint_takes_traffic_again_when_its_ejection_ends() {
        let r = routes(
            vec![service(vec![endpoint(1, 0, true), endpoint(3, 1, true)])],
            &[],
        );
        let route = &r[0];
        let outliers = route.outliers.as_ref().unwrap_or_else(|| panic!("default"));
        // Three gateway errors in a row eject the local endpoint for the default 5 s.
        for _ in 0..3 {
            outliers.record(0, Verdict::GatewayError, Instant::now());
        }
        assert_eq!(
            choose(route, &route.all, &[], Instant::now()),
            1,
            "the peer serves"
        );
        tokio::time::advance(Duration::from_millis(4_900)).await;
        assert_eq!(
            choose(route, &route.all, &[], Instant::now()),
            1,
            "still ejected"
        );
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(
            choose(route, &route.all, &[], Instant::now()),
            0,
            "back home"
        );
        // A second ejection lasts twice as long.
        for _ in 0..3 {
            outliers.record(0, Verdict::GatewayError, Instant::now());
        }
        tokio::time::advance(Duration::from_millis(9_900)).await;
        assert_eq!(choose(route, &route.all, &[], Instant::now()), 1);
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(choose(route, &route.all, &[], Instant::now()), 0);
    }

    #[test]
    fn one_priority_of_healthy_endpoints_is_not_prioritized() {
        assert!(!prioritized(&[endpoint(1, 0, true), endpoint(2, 0, true)]));
        assert!(prioritized(&[endpoint(1, 0, true), endpoint(2, 1, true)]));
        assert!(prioritized(&[endpoint(1, 0, true), endpoint(2, 0, false)]));
    }
}
