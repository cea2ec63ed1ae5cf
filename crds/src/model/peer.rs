//! `ServiceMeshPeer`: its name, addresses, ports, gateways and security, as a `core` peer.

use super::*;

/// Parses a peer name (`metadata.name` of all three kinds).
pub fn peer_name(name: &str, out: &mut Findings) -> Option<PeerName> {
    match name.parse::<PeerName>() {
        Ok(p) => Some(p),
        Err(e) => {
            out.push(
                Finding::error("InvalidPeerName", FieldPath::parse("metadata.name"), e.to_string()).hint(
                    "peer names are DNS-1123 labels of at most 55 characters, so <peer>-exports and <peer>-imports stay valid DNS labels",
                ),
            );
            None
        }
    }
}

pub(super) fn port(
    value: Option<i32>,
    default: i32,
    path: FieldPath,
    out: &mut Findings,
) -> Option<u16> {
    // 0 is Maistra's "unset": the default port.
    let v = value.filter(|p| *p != 0).unwrap_or(default);
    match u16::try_from(v) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            out.push(Finding::error(
                "InvalidPort",
                path,
                format!("port {v} is outside 1–65535"),
            ));
            None
        }
    }
}

pub(super) fn check_address(addr: &str, path: FieldPath, out: &mut Findings) -> bool {
    let bad = |reason: &'static str, msg: String, out: &mut Findings| {
        out.push(Finding::error(reason, path.clone(), msg));
        false
    };
    if addr.contains('%') {
        return bad(
            "InvalidAddress",
            format!("{addr:?} has an IPv6 zone id; zones are local to one host"),
            out,
        );
    }
    if let Ok(ip) = addr
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        let reason = match ip {
            _ if ip.is_unspecified() => Some("the unspecified address"),
            _ if ip.is_multicast() => Some("a multicast address"),
            IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
            IpAddr::V4(v4) if v4.octets() == [169, 254, 169, 254] => {
                Some("the cloud metadata address")
            }
            IpAddr::V4(v4) if v4.is_link_local() => Some("a link-local address"),
            IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => Some("a link-local address"),
            _ => None,
        };
        return match reason {
            Some(r) => bad(
                "InvalidAddress",
                format!("{addr:?} is {r}, not a peer gateway"),
                out,
            ),
            None => true,
        };
    }
    if let Some((host, p)) = addr.rsplit_once(':')
        && p.parse::<u16>().is_ok()
    {
        out.push(
            Finding::error("InvalidAddress", path, format!("{addr:?} includes a port")).hint(
                format!("write {host:?} here and set remote.discoveryPort / remote.servicePort"),
            ),
        );
        return false;
    }
    if let Some(stripped) = addr.strip_suffix('.') {
        out.push(
            Finding::error("InvalidAddress", path, format!("{addr:?} ends with a dot"))
                .hint(format!("write {stripped:?}")),
        );
        return false;
    }
    match addr.parse::<Hostname>() {
        Ok(_) => true,
        Err(e) => bad(
            "InvalidAddress",
            format!("{addr:?} is neither an IP address nor a DNS name: {e}"),
            out,
        ),
    }
}

/// Converts a `ServiceMeshPeer`. `name` is its `metadata.name`.
pub fn convert_peer(name: &str, spec: &ServiceMeshPeerSpec, out: &mut Findings) -> Option<Peer> {
    let peer = peer_name(name, out);
    let base = FieldPath::parse("spec");
    let mut addresses = Vec::new();
    let (mut discovery_port, mut service_port) = (None, None);
    match &spec.remote {
        None => out.push(
            Finding::error(
                "MissingField",
                base.key("remote"),
                "spec.remote is required to reach the peer",
            )
            .hint("set spec.remote.addresses to the peer's ingress gateway addresses"),
        ),
        Some(remote) => {
            let path = base.key("remote").key("addresses");
            let list = remote.addresses.as_deref().unwrap_or_default();
            if list.is_empty() {
                out.push(
                    Finding::error(
                        "MissingAddresses",
                        path.clone(),
                        "no addresses: the peer cannot be reached",
                    )
                    .hint("list the DNS names or IPs of the peer's ingress gateway"),
                );
            } else if list.len() > MAX_ADDRESSES {
                out.push(Finding::error(
                    "TooManyAddresses",
                    path.clone(),
                    format!("{} addresses; the limit is {MAX_ADDRESSES}", list.len()),
                ));
            } else {
                let mut seen = BTreeSet::new();
                for (i, a) in list.iter().enumerate() {
                    if check_address(a, path.index(i), out) {
                        if seen.insert(a.as_str()) {
                            addresses.push(a.clone());
                        } else {
                            out.push(Finding::warning(
                                "DuplicateAddress",
                                path.index(i),
                                format!("{a:?} is listed twice"),
                            ));
                        }
                    }
                }
            }
            discovery_port = port(
                remote.discovery_port,
                DEFAULT_DISCOVERY_PORT,
                base.key("remote").key("discoveryPort"),
                out,
            );
            service_port = port(
                remote.service_port,
                DEFAULT_SERVICE_PORT,
                base.key("remote").key("servicePort"),
                out,
            );
            if discovery_port.is_some() && discovery_port == service_port {
                out.push(Finding::error(
                    "PortClash",
                    base.key("remote").key("servicePort"),
                    "servicePort equals discoveryPort; the gateway serves them on separate ports",
                ));
            }
        }
    }
    if let Some(gw) = &spec.gateways {
        for (which, r) in [("ingress", &gw.ingress), ("egress", &gw.egress)] {
            if let Some(n) = r.as_ref().and_then(|r| r.name.as_deref())
                && let Err(e) = name::dns1123_subdomain("gateway name", n)
            {
                out.push(name_finding(
                    base.key("gateways").key(which).key("name"),
                    &e,
                ));
            }
        }
    }
    let sec_path = base.key("security");
    let Some(sec) = &spec.security else {
        out.push(
            Finding::error("MissingField", sec_path, "spec.security is required")
                .hint("set security.trustDomain and security.clientID; meshfed never peers without authenticating the peer"),
        );
        return None;
    };
    let trust_domain = match sec.trust_domain.as_deref().filter(|s| !s.is_empty()) {
        None => {
            out.push(
                Finding::error(
                    "MissingTrustDomain",
                    sec_path.key("trustDomain"),
                    "the peer's trust domain is required",
                )
                .hint("by convention <peer>.local, e.g. beta-mesh.local"),
            );
            None
        }
        Some(td) => match td.parse::<TrustDomain>() {
            Ok(td) => Some(td),
            Err(e) => {
                out.push(Finding::error(
                    "InvalidTrustDomain",
                    sec_path.key("trustDomain"),
                    e.to_string(),
                ));
                None
            }
        },
    };
    let client_path = sec_path.key("clientID");
    let client_id = match sec.client_id.as_deref().filter(|s| !s.is_empty()) {
        None => {
            out.push(
                Finding::error("MissingClientID", client_path, "clientID is required")
                    .hint("the peer egress gateway's identity, e.g. beta-mesh.local/ns/beta-system/sa/egress-alpha-mesh-service-account; Maistra let an empty clientID admit everyone, meshfed refuses"),
            );
            None
        }
        Some(raw) => match SpiffeId::from_client_id(raw) {
            Err(e) => {
                out.push(
                    Finding::error("InvalidClientID", client_path, e.to_string())
                        .hint("write <trust-domain>/ns/<namespace>/sa/<service-account>"),
                );
                None
            }
            Ok(id) if !id.is_workload() => {
                out.push(
                    Finding::error(
                        "InvalidClientID",
                        client_path,
                        format!("clientID {raw:?} names a trust domain, not a workload"),
                    )
                    .hint("write <trust-domain>/ns/<namespace>/sa/<service-account>"),
                );
                None
            }
            Ok(id) => {
                if raw.starts_with("spiffe://") {
                    out.push(
                        Finding::warning(
                            "ClientIDHasScheme",
                            client_path.clone(),
                            "clientID starts with spiffe://",
                        )
                        .hint(format!(
                            "Maistra expects {:?}; meshfed accepts both forms",
                            id.to_client_id()
                        )),
                    );
                }
                if let Some(td) = &trust_domain {
                    if id.trust_domain() != td {
                        out.push(
                            Finding::error(
                                "ClientIDTrustDomainMismatch",
                                client_path,
                                format!("clientID is in trust domain {:?}, but spec.security.trustDomain is {:?}", id.trust_domain().as_str(), td.as_str()),
                            )
                            .hint("the peer's egress gateway identity must be in the peer's trust domain"),
                        );
                        None
                    } else {
                        Some(id)
                    }
                } else {
                    Some(id)
                }
            }
        },
    };
    if let Some(chain) = &sec.certificate_chain {
        let p = sec_path.key("certificateChain");
        if !(chain.kind.is_empty() || chain.kind == "ConfigMap") {
            out.push(
                Finding::error(
                    "UnsupportedCertificateChainKind",
                    p.key("kind"),
                    format!("kind {:?} is not supported", chain.kind),
                )
                .hint(
                    "use ConfigMap (key root-cert.pem), or exchange bundles with a peering token",
                ),
            );
        }
        if chain.api_group.as_deref().is_some_and(|g| !g.is_empty()) {
            out.push(Finding::error(
                "UnsupportedCertificateChainKind",
                p.key("apiGroup"),
                "a ConfigMap has the core API group; leave apiGroup empty",
            ));
        }
        if let Err(e) = name::dns1123_subdomain("ConfigMap name", &chain.name) {
            out.push(name_finding(p.key("name"), &e));
        }
    }
    let egress = spec
        .gateways
        .as_ref()
        .and_then(|g| g.egress.as_ref())
        .and_then(|e| e.name.clone())
        .unwrap_or_else(|| format!("egress-{name}"));
    let ingress = spec
        .gateways
        .as_ref()
        .and_then(|g| g.ingress.as_ref())
        .and_then(|e| e.name.clone())
        .unwrap_or_else(|| format!("ingress-{name}"));
    Some(Peer {
        name: peer?,
        trust_domain: trust_domain?,
        client_id: client_id?,
        addresses,
        discovery_port: discovery_port?,
        service_port: service_port?,
        egress_gateway: egress,
        ingress_gateway: ingress,
        exports: Vec::new(),
        imports: None,
    })
}
