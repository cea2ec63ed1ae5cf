//! Traffic policies: timeouts, retries, faults, outlier detection, connection pools and routing.

use super::*;

pub(super) fn duration_field(raw: &str, path: FieldPath, out: &mut Findings) -> Option<Duration> {
    meshfed_core::traffic::parse_duration(raw)
        .map_err(|e| out.push(Finding::error("InvalidDuration", path, e.to_string())))
        .ok()
}

pub(super) fn share_field(
    p: Option<&crate::mesh::Percent>,
    path: FieldPath,
    out: &mut Findings,
) -> Option<Share> {
    let Some(p) = p else {
        return Some(Share::ALL);
    };
    let share = p.value.as_f64().and_then(Share::from_percent);
    if share.is_none() {
        out.push(Finding::error(
            "InvalidPercentage",
            path.key("percentage").key("value"),
            format!("{} is not a percentage from 0 to 100", p.value),
        ));
    }
    share
}

pub(super) fn convert_traffic(
    t: &crate::mesh::MeshTrafficPolicy,
    path: &FieldPath,
    catalog: &Catalog,
    out: &mut Findings,
) -> Option<(meshfed_core::ServiceKey, TrafficPolicy)> {
    use meshfed_core::traffic::{Abort, Delay, Retries, RetryOn};
    let before = errors_in(out);
    let namespace: Option<Namespace> = t
        .namespace
        .parse()
        .map_err(|e| out.push(name_finding(path.key("namespace"), &e)))
        .ok();
    let service: Option<meshfed_core::ServiceName> = t
        .service
        .parse()
        .map_err(|e| out.push(name_finding(path.key("service"), &e)))
        .ok();
    let key = meshfed_core::ServiceKey::new(namespace?, service?);
    if catalog.get(&key).is_none() {
        out.push(Finding::warning(
            "UnknownService",
            path.key("service"),
            format!("no service {key}; the policy applies to nothing yet"),
        ));
    }
    let mut policy = TrafficPolicy {
        timeout: t
            .timeout
            .as_deref()
            .and_then(|d| duration_field(d, path.key("timeout"), out)),
        ..TrafficPolicy::default()
    };
    if let Some(r) = &t.retries {
        let rp = path.key("retries");
        let attempts = u32::try_from(r.attempts)
            .ok()
            .filter(|a| *a <= 10)
            .unwrap_or_else(|| {
                out.push(Finding::error(
                    "InvalidAttempts",
                    rp.key("attempts"),
                    format!("{} retries: expected 0 to 10", r.attempts),
                ));
                0
            });
        let retry_on = match r.retry_on.as_deref() {
            None => RetryOn::parse("connect-failure").unwrap_or_default(),
            Some(s) => RetryOn::parse(s).unwrap_or_else(|e| {
                out.push(Finding::error(
                    "UnknownRetryOn",
                    rp.key("retryOn"),
                    e.to_string(),
                ));
                RetryOn::default()
            }),
        };
        policy.retries = Retries {
            attempts,
            per_try_timeout: r
                .per_try_timeout
                .as_deref()
                .and_then(|d| duration_field(d, rp.key("perTryTimeout"), out)),
            retry_on,
        };
    }
    if let Some(f) = &t.fault {
        let fp = path.key("fault");
        if let Some(d) = &f.delay {
            let dp = fp.key("delay");
            let share = share_field(d.percentage.as_ref(), dp.clone(), out);
            let fixed = duration_field(&d.fixed_delay, dp.key("fixedDelay"), out);
            if let (Some(share), Some(fixed_delay)) = (share, fixed) {
                policy.fault.delay = Some(Delay { share, fixed_delay });
            }
        }
        if let Some(a) = &f.abort {
            let ap = fp.key("abort");
            let share = share_field(a.percentage.as_ref(), ap.clone(), out);
            let status = u16::try_from(a.http_status)
                .ok()
                .filter(|s| (200..=599).contains(s));
            if status.is_none() {
                out.push(Finding::error(
                    "InvalidHttpStatus",
                    ap.key("httpStatus"),
                    format!("{} is not an HTTP status from 200 to 599", a.http_status),
                ));
            }
            if let (Some(share), Some(http_status)) = (share, status) {
                policy.fault.abort = Some(Abort { share, http_status });
            }
        }
    }
    if let Some(cp) = &t.connection_pool {
        let cpp = path.key("connectionPool");
        if let Some(n) = cp.tcp.as_ref().and_then(|t| t.max_connections) {
            policy.connection_pool.max_connections = count_field(
                n,
                1,
                cpp.key("tcp").key("maxConnections"),
                "InvalidConnectionPool",
                out,
            );
        }
        if let Some(n) = cp.http.as_ref().and_then(|h| h.http1_max_pending_requests) {
            policy.connection_pool.max_pending_requests = count_field(
                n,
                1,
                cpp.key("http").key("http1MaxPendingRequests"),
                "InvalidConnectionPool",
                out,
            );
        }
        if let Some(n) = cp.http.as_ref().and_then(|h| h.http2_max_requests) {
            policy.connection_pool.max_requests = count_field(
                n,
                1,
                cpp.key("http").key("http2MaxRequests"),
                "InvalidConnectionPool",
                out,
            );
        }
    }
    if let Some(od) = &t.outlier_detection {
        let op = path.key("outlierDetection");
        let mut o = meshfed_core::traffic::OutlierDetection::default();
        if let Some(n) = od.consecutive_5xx_errors {
            o.consecutive_5xx_errors = count_field(
                n,
                0,
                op.key("consecutive5xxErrors"),
                "InvalidOutlierDetection",
                out,
            );
        }
        if let Some(n) = od.consecutive_gateway_errors {
            o.consecutive_gateway_errors = count_field(
                n,
                0,
                op.key("consecutiveGatewayErrors"),
                "InvalidOutlierDetection",
                out,
            );
        }
        if let Some(d) = &od.base_ejection_time
            && let Some(d) = duration_field(d, op.key("baseEjectionTime"), out)
        {
            o.base_ejection_time = d;
        }
        if let Some(n) = od.max_ejection_percent {
            if (0..=100).contains(&n) {
                o.max_ejection_percent = u32::try_from(n).unwrap_or_default();
            } else {
                out.push(Finding::error(
                    "InvalidPercentage",
                    op.key("maxEjectionPercent"),
                    format!("{n} is not a percentage from 0 to 100"),
                ));
            }
        }
        if o.consecutive_5xx_errors == 0 && o.consecutive_gateway_errors == 0 {
            out.push(Finding::warning(
                "OutlierDetectionOff",
                op,
                "both consecutive5xxErrors and consecutiveGatewayErrors are 0, so nothing is ever ejected",
            ));
        }
        policy.outlier_detection = Some(o);
    }
    if let Some(simple) = t.load_balancer.as_ref().and_then(|l| l.simple.as_deref()) {
        match meshfed_core::traffic::LoadBalancer::parse(simple) {
            Some(lb) => policy.load_balancer = lb,
            None => out.push(
                Finding::error(
                    "UnsupportedLoadBalancer",
                    path.key("loadBalancer").key("simple"),
                    format!("{simple:?} is not LEAST_REQUEST, ROUND_ROBIN or RANDOM"),
                )
                .hint("PASSTHROUGH and LEAST_CONN are not supported; LEAST_REQUEST replaces LEAST_CONN"),
            ),
        }
    }
    policy.routing = convert_routing(t, path, &key, catalog, out);
    (errors_in(out) == before).then_some((key, policy))
}

/// `subsets` and `http` of a traffic entry (Istio `DestinationRule.subsets`, `VirtualService.http`).
pub(super) fn convert_routing(
    t: &crate::mesh::MeshTrafficPolicy,
    path: &FieldPath,
    key: &meshfed_core::ServiceKey,
    catalog: &Catalog,
    out: &mut Findings,
) -> meshfed_core::routing::Routing {
    use meshfed_core::routing::{Destination, HttpMatch, HttpRoute, Routing, Subset};
    let mut routing = Routing::default();
    let mut names = BTreeSet::new();
    for (i, s) in t.subsets.iter().flatten().enumerate() {
        let sp = path.key("subsets").index(i);
        let name_ok = name::dns1123_label("subset name", &s.name)
            .map_err(|e| out.push(name_finding(sp.key("name"), &e)))
            .is_ok();
        let labels = s.labels.clone().unwrap_or_default();
        if !(labels_ok(&labels, &sp.key("labels"), out) && name_ok) {
            continue;
        }
        if !names.insert(s.name.clone()) {
            out.push(Finding::error(
                "DuplicateSubset",
                sp.key("name"),
                format!("subset {:?} is defined twice", s.name),
            ));
            continue;
        }
        let subset = Subset {
            name: s.name.clone(),
            labels,
        };
        if !catalog
            .workloads()
            .any(|w| &w.service == key && subset.selects(&w.labels))
        {
            out.push(Finding::warning(
                "EmptySubset",
                sp.key("labels"),
                format!(
                    "no workload of {key} carries these labels; requests routed to subset {:?} get 503",
                    s.name
                ),
            ));
        }
        routing.subsets.push(subset);
    }
    let host = catalog.hostname_of(key).ok();
    let own_host = |h: &str| {
        let (name, ns) = (key.name.as_str(), key.namespace.as_str());
        h == name
            || h == format!("{name}.{ns}")
            || h == format!("{name}.{ns}.svc")
            || host.as_ref().is_some_and(|x| x.as_str() == h)
    };
    for (i, r) in t.http.iter().flatten().enumerate() {
        let rp = path.key("http").index(i);
        let mut matches = Vec::new();
        for (j, m) in r.match_.iter().flatten().enumerate() {
            let mp = rp.key("match").index(j);
            let mut hm = HttpMatch {
                uri: m
                    .uri
                    .as_ref()
                    .and_then(|u| string_match(u, mp.key("uri"), true, out)),
                method: m
                    .method
                    .as_ref()
                    .and_then(|u| string_match(u, mp.key("method"), false, out)),
                ..HttpMatch::default()
            };
            for (h, sm) in m.headers.iter().flatten() {
                let hp = mp.key("headers").key(h);
                let valid = !h.is_empty()
                    && h.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || b"-_.!#$%&'*+^`|~".contains(&b)
                    });
                if !valid {
                    out.push(
                        Finding::error(
                            "InvalidHeaderName",
                            hp,
                            format!("{h:?} is not a lower-case header name"),
                        )
                        .hint("header names are matched in lower case, as in Istio"),
                    );
                    continue;
                }
                if let Some(x) = string_match(sm, hp, false, out) {
                    hm.headers.insert(h.clone(), x);
                }
            }
            matches.push(hm);
        }
        let dp = rp.key("route");
        if r.route.is_empty() {
            out.push(Finding::error(
                "EmptyRoute",
                dp.clone(),
                "a route needs at least one destination",
            ));
        }
        let mut route = Vec::new();
        let mut total = 0i64;
        for (k, d) in r.route.iter().enumerate() {
            let p = dp.index(k);
            if !own_host(&d.destination.host) {
                out.push(
                    Finding::error(
                        "CrossServiceRoute",
                        p.key("destination").key("host"),
                        format!(
                            "{:?} is not {key}; routes choose among this service's own subsets",
                            d.destination.host
                        ),
                    )
                    .hint("put the route in the traffic entry of the service it targets"),
                );
            }
            if let Some(sub) = &d.destination.subset
                && !names.contains(sub)
            {
                out.push(
                    Finding::error(
                        "UnknownSubset",
                        p.key("destination").key("subset"),
                        format!("no subset {sub:?} in subsets"),
                    )
                    .hint(format!(
                        "defined: {}",
                        names.iter().cloned().collect::<Vec<_>>().join(", ")
                    )),
                );
            }
            let weight = d.weight.unwrap_or(if r.route.len() == 1 { 100 } else { 0 });
            if !(0..=100).contains(&weight) {
                out.push(Finding::error(
                    "InvalidWeight",
                    p.key("weight"),
                    format!("{weight} is not a weight from 0 to 100"),
                ));
            }
            total += weight;
            route.push(Destination {
                subset: d.destination.subset.clone(),
                weight: u32::try_from(weight.clamp(0, 100)).unwrap_or_default(),
            });
        }
        if !r.route.is_empty() && total != 100 {
            out.push(
                Finding::error(
                    "WeightSum",
                    dp,
                    format!("the weights sum to {total}; they must sum to 100"),
                )
                .hint("a single destination may omit its weight"),
            );
        }
        routing.http.push(HttpRoute {
            name: r.name.clone(),
            matches,
            route,
        });
    }
    routing
}

/// An Istio `StringMatch`: exactly one of `exact`, `prefix`, `regex`. A `uri` match that is not a
/// regex must start with `/`.
pub(super) fn string_match(
    m: &crate::mesh::StringMatchSettings,
    path: FieldPath,
    uri: bool,
    out: &mut Findings,
) -> Option<meshfed_core::routing::StringMatch> {
    use meshfed_core::routing::{Pattern, StringMatch};
    let r = match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), None, None) => ("exact", StringMatch::Exact(e.clone())),
        (None, Some(p), None) => ("prefix", StringMatch::Prefix(p.clone())),
        (None, None, Some(r)) => match Pattern::new(r) {
            Ok(p) => ("regex", StringMatch::Regex(p)),
            Err(e) => {
                out.push(Finding::error(
                    "InvalidRegex",
                    path.key("regex"),
                    format!("{r:?}: {e}"),
                ));
                return None;
            }
        },
        _ => {
            out.push(Finding::error(
                "StringMatchOneOf",
                path,
                "set exactly one of exact, prefix or regex",
            ));
            return None;
        }
    };
    if let (true, (field, StringMatch::Exact(v) | StringMatch::Prefix(v))) = (uri, &r)
        && !v.starts_with('/')
    {
        out.push(Finding::error(
            "InvalidPath",
            path.key(field),
            format!("{v:?} must start with /"),
        ));
        return None;
    }
    Some(r.1)
}

/// A count of at least `min` that fits in u32; 0 after reporting `reason` otherwise.
pub(super) fn count_field(
    n: i64,
    min: i64,
    path: FieldPath,
    reason: &'static str,
    out: &mut Findings,
) -> u32 {
    match u32::try_from(n) {
        Ok(v) if n >= min => v,
        _ => {
            out.push(Finding::error(
                reason,
                path,
                format!("{n}: expected a whole number from {min} to {}", u32::MAX),
            ));
            0
        }
    }
}
