//! The embedded-mode `Mesh` document: the catalog, gateways and federation as one model.

use super::*;

/// A converted `Mesh` document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshInfo {
    pub name: MeshName,
    pub namespace: Namespace,
    pub trust_domain: TrustDomain,
    pub locality: Option<Locality>,
    pub catalog: Catalog,
    pub policies: Vec<meshfed_core::authz::ScopedPolicy>,
    pub traffic: BTreeMap<meshfed_core::ServiceKey, meshfed_core::traffic::TrafficPolicy>,
    pub gateways: BTreeMap<String, meshfed_core::federation::GatewayAddress>,
}

/// Converts a `Mesh` document.
pub fn convert_mesh(
    name: &str,
    namespace: Option<&str>,
    spec: &MeshSpec,
    out: &mut Findings,
) -> Option<MeshInfo> {
    let base = FieldPath::parse("spec");
    let mesh_name = name
        .parse::<MeshName>()
        .map_err(|e| out.push(name_finding(FieldPath::parse("metadata.name"), &e)))
        .ok();
    let ns = match namespace {
        None => {
            out.push(
                Finding::error(
                    "MissingNamespace",
                    FieldPath::parse("metadata.namespace"),
                    "a Mesh needs metadata.namespace",
                )
                .hint("the mesh's control-plane namespace, where its federation resources live"),
            );
            None
        }
        Some(n) => n
            .parse::<Namespace>()
            .map_err(|e| out.push(name_finding(FieldPath::parse("metadata.namespace"), &e)))
            .ok(),
    };
    let td = spec
        .trust_domain
        .parse::<TrustDomain>()
        .map_err(|e| {
            out.push(Finding::error(
                "InvalidTrustDomain",
                base.key("trustDomain"),
                e.to_string(),
            ))
        })
        .ok();
    let cd_raw = spec
        .cluster_domain
        .as_deref()
        .unwrap_or(DEFAULT_CLUSTER_DOMAIN);
    let cluster_domain = cd_raw
        .parse::<Hostname>()
        .map_err(|e| {
            out.push(Finding::error(
                "InvalidName",
                base.key("clusterDomain"),
                e.to_string(),
            ))
        })
        .ok();
    let locality = locality(spec.locality.as_ref(), &base.key("locality"), out);
    let mut catalog = Catalog::new(cluster_domain.clone().unwrap_or_else(|| {
        #[allow(clippy::unwrap_used)] // a constant known to be valid
        DEFAULT_CLUSTER_DOMAIN.parse().unwrap()
    }));
    let services = spec.services.as_deref().unwrap_or_default();
    if services.len() > MAX_SERVICES {
        out.push(Finding::error(
            "TooManyServices",
            base.key("services"),
            format!("{} services; the limit is {MAX_SERVICES}", services.len()),
        ));
    } else {
        for (i, s) in services.iter().enumerate() {
            if let Some(svc) = convert_service(s, &base.key("services").index(i), out)
                && let Err(e) = catalog.insert(svc)
            {
                out.push(Finding::error(
                    "DuplicateService",
                    base.key("services").index(i),
                    e.to_string(),
                ));
            }
        }
    }
    for (i, w) in spec.workloads.iter().flatten().enumerate() {
        convert_workload(
            w,
            &base.key("workloads").index(i),
            locality.as_ref(),
            &mut catalog,
            out,
        );
    }
    let mut policies = Vec::new();
    for (i, p) in spec.authorization_policies.iter().flatten().enumerate() {
        if let Some(sp) = convert_policy(
            p,
            &base.key("authorizationPolicies").index(i),
            &catalog,
            out,
        ) {
            policies.push(sp);
        }
    }
    let mut traffic = BTreeMap::new();
    for (i, t) in spec.traffic.iter().flatten().enumerate() {
        let tp = base.key("traffic").index(i);
        if let Some((key, policy)) = convert_traffic(t, &tp, &catalog, out)
            && traffic.insert(key.clone(), policy).is_some()
        {
            out.push(Finding::error(
                "DuplicateTrafficPolicy",
                tp.key("service"),
                format!("{key} already has a traffic policy earlier in the list"),
            ));
        }
    }
    let gateways = convert_gateways(spec.gateways.as_deref().unwrap_or_default(), &base, out);
    Some(MeshInfo {
        name: mesh_name?,
        namespace: ns?,
        trust_domain: td?,
        locality,
        catalog,
        policies,
        traffic,
        gateways,
    })
    .filter(|_| cluster_domain.is_some())
}

/// An `ip:port` field.
pub(super) fn socket_addr(
    path: &FieldPath,
    v: &str,
    out: &mut Findings,
) -> Option<std::net::SocketAddr> {
    v.parse::<std::net::SocketAddr>()
        .map_err(|_| {
            out.push(
                Finding::error(
                    "InvalidAddress",
                    path.clone(),
                    format!("{v:?} is not an ip:port address"),
                )
                .hint("e.g. 127.0.1.11:15006"),
            );
        })
        .ok()
}

/// Most gateways one mesh may declare.
pub(super) const MAX_GATEWAYS: usize = 1_000;

pub(super) fn convert_gateways(
    gateways: &[crate::mesh::MeshGateway],
    base: &FieldPath,
    out: &mut Findings,
) -> BTreeMap<String, meshfed_core::federation::GatewayAddress> {
    let mut all = BTreeMap::new();
    if gateways.len() > MAX_GATEWAYS {
        out.push(Finding::error(
            "TooManyGateways",
            base.key("gateways"),
            format!("{} gateways; the limit is {MAX_GATEWAYS}", gateways.len()),
        ));
        return all;
    }
    for (i, g) in gateways.iter().enumerate() {
        let p = base.key("gateways").index(i);
        let name_ok = name::dns1123_label("gateway name", &g.name)
            .map_err(|e| out.push(name_finding(p.key("name"), &e)))
            .is_ok();
        let address = socket_addr(&p.key("address"), &g.address, out);
        let discovery = match &g.discovery_address {
            Some(d) => socket_addr(&p.key("discoveryAddress"), d, out).map(Some),
            None => Some(None),
        };
        let (Some(address), Some(discovery), true) = (address, discovery, name_ok) else {
            continue;
        };
        let gw = meshfed_core::federation::GatewayAddress { address, discovery };
        if all.insert(g.name.clone(), gw).is_some() {
            out.push(Finding::error(
                "DuplicateGateway",
                p.key("name"),
                format!("gateway {:?} is declared twice", g.name),
            ));
        }
    }
    all
}
