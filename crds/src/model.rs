//! Conversion of the wire types into `meshfed-core` domain values. Each function returns the
//! converted value (skipping only what is invalid) together with every finding, so that
//! `meshfed validate` and everything that consumes the model share one set of rules.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use meshfed_core::export::{ExportRule, ExportSelector};
use meshfed_core::federation::Peer;
use meshfed_core::import::{ImportRule, ImportSet};
use meshfed_core::locality::Locality;
use meshfed_core::mapping::{NameMapping, Pattern, PatternError};
use meshfed_core::name::{self, NameError};
use meshfed_core::selector::{LabelSelector, RawRequirement};
use meshfed_core::traffic::{Share, TrafficPolicy};
use meshfed_core::{
    Catalog, Hostname, MeshName, Namespace, PeerName, Protocol, Service, ServicePort, SpiffeId,
    TrustDomain,
};

use crate::common::{LABEL_SELECTOR, NAME_SELECTOR, ServiceNameMapping};
use crate::diag::{FieldPath, Finding};
use crate::exports::{ExportedServiceRule, ExportedServiceSetSpec};
use crate::imports::ImportedServiceSetSpec;
use crate::mesh::MeshSpec;
use crate::peer::{DEFAULT_DISCOVERY_PORT, DEFAULT_SERVICE_PORT, ServiceMeshPeerSpec};

/// Most addresses a peer may list.
pub const MAX_ADDRESSES: usize = 64;
/// Most rules one service set may hold.
pub const MAX_RULES: usize = 1024;
/// Most services one mesh file may define.
pub const MAX_SERVICES: usize = 50_000;
/// The cluster domain when a mesh does not set one.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// Findings collected while converting one object.
pub type Findings = Vec<Finding>;

pub(crate) fn name_finding(path: FieldPath, e: &NameError) -> Finding {
    Finding::error("InvalidName", path, e.to_string())
}

fn pattern_finding(path: FieldPath, e: &PatternError) -> Finding {
    let reason = if e.reason() == "PartialWildcard" {
        "PartialWildcard"
    } else {
        "InvalidName"
    };
    Finding::error(reason, path, e.to_string())
}

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

fn port(value: Option<i32>, default: i32, path: FieldPath, out: &mut Findings) -> Option<u16> {
    let v = value.unwrap_or(default);
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

fn check_address(addr: &str, path: FieldPath, out: &mut Findings) -> bool {
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

fn pattern_part<T>(
    s: Option<&str>,
    parse: fn(&str) -> Result<Pattern<T>, PatternError>,
    path: FieldPath,
    out: &mut Findings,
) -> Option<Pattern<T>> {
    parse(s.unwrap_or(""))
        .map_err(|e| out.push(pattern_finding(path, &e)))
        .ok()
}

/// Converts a `nameSelector` (or an alias entry) at `path`.
fn mapping(m: &ServiceNameMapping, path: &FieldPath, out: &mut Findings) -> Option<NameMapping> {
    let alias = m.alias.as_ref();
    let alias_path = path.key("alias");
    let namespace = pattern_part(
        m.namespace.as_deref(),
        Pattern::parse_namespace,
        path.key("namespace"),
        out,
    );
    let name = pattern_part(
        m.name.as_deref(),
        Pattern::parse_name,
        path.key("name"),
        out,
    );
    let alias_namespace = pattern_part(
        alias.and_then(|a| a.namespace.as_deref()),
        Pattern::parse_namespace,
        alias_path.key("namespace"),
        out,
    );
    let alias_name = pattern_part(
        alias.and_then(|a| a.name.as_deref()),
        Pattern::parse_name,
        alias_path.key("name"),
        out,
    );
    let (namespace, name, alias_namespace, alias_name) =
        (namespace?, name?, alias_namespace?, alias_name?);
    let mapping = NameMapping {
        namespace,
        name,
        alias_namespace,
        alias_name,
    };
    if mapping.collapses() {
        out.push(
            Finding::warning("AliasCollapses", path.key("alias"), "the alias gives every matching service the same name; only one of them can be used")
                .hint("select one service by name, or alias only the namespace"),
        );
    }
    Some(mapping)
}

/// True when rule `earlier` selects at least everything `later` does (name selectors only).
fn covers(earlier: &NameMapping, later: &NameMapping) -> bool {
    let ns = earlier.namespace == Pattern::Any || earlier.namespace == later.namespace;
    let name = earlier.name == Pattern::Any || earlier.name == later.name;
    ns && name
}

fn shadowing(mappings: &[(usize, NameMapping)], path: &FieldPath, out: &mut Findings) {
    for (j, (idx_j, later)) in mappings.iter().enumerate() {
        if let Some((idx_i, earlier)) = mappings[..j].iter().find(|(_, e)| covers(e, later)) {
            let (reason, msg) = if earlier == later {
                (
                    "DuplicateRule",
                    format!("rule {idx_j} repeats rule {idx_i}"),
                )
            } else {
                (
                    "UnreachableRule",
                    format!("rule {idx_i} already matches every service rule {idx_j} matches"),
                )
            };
            out.push(Finding::warning(reason, path.index(*idx_j), msg).hint(
                "the first matching rule wins; move specific rules first or remove this one",
            ));
        }
    }
}

fn too_many(n: usize, path: &FieldPath, out: &mut Findings) -> bool {
    if n > MAX_RULES {
        out.push(Finding::error(
            "TooManyRules",
            path.clone(),
            format!("{n} rules; the limit is {MAX_RULES}"),
        ));
        return true;
    }
    false
}

fn rule_type_error(t: &str, path: FieldPath, allowed: &str) -> Finding {
    Finding::error("UnknownRuleType", path, format!("rule type {t:?} is not {allowed}"))
        .hint("Maistra skipped such rules with a log line; meshfed rejects them so nothing is silently ignored")
}

fn export_rule(
    i: usize,
    rule: &ExportedServiceRule,
    path: &FieldPath,
    out: &mut Findings,
) -> Option<ExportRule> {
    let p = path.index(i);
    let selector = match rule.type_.as_str() {
        NAME_SELECTOR => {
            if rule.label_selector.is_some() {
                out.push(Finding::warning(
                    "IgnoredSelector",
                    p.key("labelSelector"),
                    "labelSelector is ignored by a NameSelector rule",
                ));
            }
            let Some(ns) = &rule.name_selector else {
                out.push(Finding::error(
                    "MissingSelector",
                    p.key("nameSelector"),
                    "a NameSelector rule needs nameSelector",
                ));
                return None;
            };
            ExportSelector::Name(mapping(ns, &p.key("nameSelector"), out)?)
        }
        LABEL_SELECTOR => {
            if rule.name_selector.is_some() {
                out.push(Finding::warning(
                    "IgnoredSelector",
                    p.key("nameSelector"),
                    "nameSelector is ignored by a LabelSelector rule",
                ));
            }
            let Some(ls) = &rule.label_selector else {
                out.push(Finding::error(
                    "MissingSelector",
                    p.key("labelSelector"),
                    "a LabelSelector rule needs labelSelector",
                ));
                return None;
            };
            let lp = p.key("labelSelector");
            let namespace = match Pattern::parse_namespace(ls.namespace.as_deref().unwrap_or("")) {
                Ok(n) => Some(n),
                Err(e) => {
                    out.push(pattern_finding(lp.key("namespace"), &e));
                    None
                }
            };
            let empty = BTreeMap::new();
            let exprs = ls.selector.match_expressions.as_deref().unwrap_or_default();
            let selector = LabelSelector::new(
                ls.selector.match_labels.as_ref().unwrap_or(&empty),
                exprs.iter().map(|e| RawRequirement {
                    key: &e.key,
                    operator: &e.operator,
                    values: e.values.as_deref().unwrap_or_default(),
                }),
            );
            let selector = match selector {
                Ok(s) => Some(s),
                Err(e) => {
                    out.push(Finding::error(
                        e.reason(),
                        lp.key("selector").join(&e.field()),
                        e.to_string(),
                    ));
                    None
                }
            };
            let mut aliases = Vec::new();
            let mut aliases_ok = true;
            for (j, a) in ls.aliases.iter().flatten().enumerate() {
                match mapping(a, &lp.key("aliases").index(j), out) {
                    Some(m) => aliases.push(m),
                    None => aliases_ok = false,
                }
            }
            if !aliases_ok {
                return None;
            }
            ExportSelector::Label {
                namespace: namespace?,
                selector: selector?,
                aliases,
            }
        }
        other => {
            out.push(rule_type_error(
                other,
                p.key("type"),
                "NameSelector or LabelSelector",
            ));
            return None;
        }
    };
    let rule = ExportRule { index: i, selector };
    if rule.selects_everything() {
        out.push(
            Finding::warning(
                "ExportsEverything",
                p,
                "this rule exports every service in every namespace to the peer",
            )
            .hint("export only what the peer needs; name services or select them by label"),
        );
    }
    Some(rule)
}

/// Converts an `ExportedServiceSet`'s rules, keeping the valid ones.
pub fn convert_exports(spec: &ExportedServiceSetSpec, out: &mut Findings) -> Vec<ExportRule> {
    let path = FieldPath::parse("spec.exportRules");
    let rules = spec.export_rules.as_deref().unwrap_or_default();
    if too_many(rules.len(), &path, out) {
        return Vec::new();
    }
    let converted: Vec<ExportRule> = rules
        .iter()
        .enumerate()
        .filter_map(|(i, r)| export_rule(i, r, &path, out))
        .collect();
    let names: Vec<(usize, NameMapping)> = converted
        .iter()
        .filter_map(|r| match &r.selector {
            ExportSelector::Name(m) => Some((r.index, m.clone())),
            ExportSelector::Label { .. } => None,
        })
        .collect();
    shadowing(&names, &path, out);
    converted
}

fn domain_suffix(
    s: Option<&str>,
    path: FieldPath,
    cluster_domain: &str,
    out: &mut Findings,
) -> Option<Hostname> {
    let s = s.filter(|s| !s.is_empty())?;
    let parsed = match s.parse::<Hostname>() {
        Ok(h) => h,
        Err(e) => {
            out.push(
                Finding::error("InvalidDomainSuffix", path, e.to_string())
                    .hint("a DNS suffix such as alpha.remote, without leading or trailing dots"),
            );
            return None;
        }
    };
    let local = format!("svc.{cluster_domain}");
    if s == cluster_domain || s == local || s.ends_with(&format!(".{local}")) {
        out.push(
            Finding::error("LocalDomainSuffix", path, format!("domainSuffix {s:?} is the local service domain"))
                .hint("use importAsLocal: true to merge with a local service; otherwise pick a separate suffix"),
        );
        return None;
    }
    Some(parsed)
}

pub(crate) fn locality(
    l: Option<&crate::common::Locality>,
    path: &FieldPath,
    out: &mut Findings,
) -> Option<Locality> {
    let l = l?;
    Locality::new(l.region.as_deref(), l.zone.as_deref(), l.subzone.as_deref())
        .map_err(|e| {
            out.push(
                Finding::error(e.reason(), path.key(e.field()), e.to_string())
                    .hint("a zone needs a region and a subzone needs a zone; Maistra dropped such a locality silently"),
            )
        })
        .ok()
        .flatten()
}

/// Converts an `ImportedServiceSet`, keeping the valid rules. `cluster_domain` is the
/// importer's (default `cluster.local`).
pub fn convert_imports(
    peer: PeerName,
    spec: &ImportedServiceSetSpec,
    cluster_domain: &str,
    out: &mut Findings,
) -> ImportSet {
    let base = FieldPath::parse("spec");
    let suffix = domain_suffix(
        spec.domain_suffix.as_deref(),
        base.key("domainSuffix"),
        cluster_domain,
        out,
    );
    let locality = locality(spec.locality.as_ref(), &base.key("locality"), out);
    let path = base.key("importRules");
    let rules_in = spec.import_rules.as_deref().unwrap_or_default();
    let mut rules = Vec::new();
    if !too_many(rules_in.len(), &path, out) {
        for (i, r) in rules_in.iter().enumerate() {
            let p = path.index(i);
            match r.type_.as_str() {
                NAME_SELECTOR => {}
                LABEL_SELECTOR => {
                    out.push(
                        Finding::error("UnsupportedImportRuleType", p.key("type"), "import rules support only NameSelector")
                            .hint("imports match exported names; Maistra's documentation mentions label selectors, but they never worked"),
                    );
                    continue;
                }
                other => {
                    out.push(rule_type_error(other, p.key("type"), "NameSelector"));
                    continue;
                }
            }
            let Some(ns) = &r.name_selector else {
                out.push(Finding::error(
                    "MissingSelector",
                    p.key("nameSelector"),
                    "a NameSelector rule needs nameSelector",
                ));
                continue;
            };
            let Some(m) = mapping(ns, &p.key("nameSelector"), out) else {
                continue;
            };
            let import_as_local = r.import_as_local.unwrap_or(false);
            if import_as_local && m.alias_namespace.fixed().is_none() {
                out.push(
                    Finding::error("ImportAsLocalNeedsAliasNamespace", p.key("nameSelector").key("alias").key("namespace"), "importAsLocal needs a fixed alias namespace")
                        .hint("set nameSelector.alias.namespace to the local namespace whose service the import merges with"),
                );
                continue;
            }
            let rule_suffix = domain_suffix(
                r.domain_suffix.as_deref(),
                p.key("domainSuffix"),
                cluster_domain,
                out,
            );
            if import_as_local && rule_suffix.is_some() {
                out.push(Finding::warning(
                    "IgnoredDomainSuffix",
                    p.key("domainSuffix"),
                    "importAsLocal overrides domainSuffix",
                ));
            }
            rules.push(ImportRule {
                index: i,
                mapping: m,
                domain_suffix: rule_suffix,
                import_as_local,
            });
        }
    }
    let names: Vec<(usize, NameMapping)> =
        rules.iter().map(|r| (r.index, r.mapping.clone())).collect();
    shadowing(&names, &path, out);
    ImportSet {
        peer,
        domain_suffix: suffix,
        locality,
        rules,
    }
}

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
fn socket_addr(path: &FieldPath, v: &str, out: &mut Findings) -> Option<std::net::SocketAddr> {
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
const MAX_GATEWAYS: usize = 1_000;

fn convert_gateways(
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

fn convert_policy(
    p: &crate::mesh::MeshAuthorizationPolicy,
    path: &FieldPath,
    catalog: &Catalog,
    out: &mut Findings,
) -> Option<meshfed_core::authz::ScopedPolicy> {
    use meshfed_core::authz::{
        Action, Operation, Pattern as P, Policy, Rule, ScopedPolicy, Source,
    };
    let before = errors_in(out);
    let name_ok = name::dns1123_label("policy name", &p.name)
        .map_err(|e| out.push(name_finding(path.key("name"), &e)))
        .is_ok();
    let namespace: Option<Namespace> = p
        .namespace
        .parse()
        .map_err(|e| out.push(name_finding(path.key("namespace"), &e)))
        .ok();
    let service: Option<meshfed_core::ServiceName> = match &p.selector {
        None => None,
        Some(sel) => sel
            .service
            .parse()
            .map_err(|e| out.push(name_finding(path.key("selector").key("service"), &e)))
            .ok(),
    };
    if let (Some(ns), Some(svc)) = (&namespace, &service)
        && catalog
            .get(&meshfed_core::ServiceKey::new(ns.clone(), svc.clone()))
            .is_none()
    {
        out.push(Finding::warning(
            "UnknownService",
            path.key("selector").key("service"),
            format!("no service {svc} in namespace {ns}; the policy applies to nothing yet"),
        ));
    }
    let action = match p.action.as_deref() {
        None | Some("ALLOW") => Action::Allow,
        Some("DENY") => Action::Deny,
        Some(other) => {
            out.push(
                Finding::error(
                    "UnknownAction",
                    path.key("action"),
                    format!("action {other:?} is not ALLOW or DENY"),
                )
                .hint("CUSTOM and AUDIT are not supported"),
            );
            Action::Allow
        }
    };
    let mut rules = Vec::new();
    for (r_i, r) in p.rules.iter().flatten().enumerate() {
        let rp = path.key("rules").index(r_i);
        let mut from = Vec::new();
        for (f_i, f) in r.from.iter().flatten().enumerate() {
            let sp = rp.key("from").index(f_i).key("source");
            let mut src = Source::default();
            for (x, pr) in f.source.principals.iter().flatten().enumerate() {
                let pr = pr.strip_prefix("spiffe://").unwrap_or(pr);
                let pat = P::parse(pr);
                if let P::Exact(e) = &pat
                    && let Err(err) = SpiffeId::from_client_id(e)
                {
                    out.push(
                        Finding::error(
                            "InvalidPrincipal",
                            sp.key("principals").index(x),
                            err.to_string(),
                        )
                        .hint("write <trust-domain>/ns/<namespace>/sa/<service-account>"),
                    );
                }
                src.principals.push(pat);
            }
            for (x, ns) in f.source.namespaces.iter().flatten().enumerate() {
                let pat = P::parse(ns);
                if let P::Exact(e) = &pat
                    && let Err(err) = name::dns1123_label("namespace", e)
                {
                    out.push(name_finding(sp.key("namespaces").index(x), &err));
                }
                src.namespaces.push(pat);
            }
            for (x, td) in f.source.trust_domains.iter().flatten().enumerate() {
                match td.parse::<TrustDomain>() {
                    Ok(t) => src.trust_domains.push(t),
                    Err(e) => out.push(Finding::error(
                        "InvalidTrustDomain",
                        sp.key("trustDomains").index(x),
                        e.to_string(),
                    )),
                }
            }
            from.push(src);
        }
        let mut to = Vec::new();
        for (t_i, t) in r.to.iter().flatten().enumerate() {
            let op_path = rp.key("to").index(t_i).key("operation");
            let mut op = Operation::default();
            for (x, pth) in t.operation.paths.iter().flatten().enumerate() {
                let fp = op_path.key("paths").index(x);
                if !(pth.starts_with('/') || pth.starts_with('*')) {
                    out.push(Finding::error(
                        "InvalidPath",
                        fp,
                        format!("path {pth:?} must start with / (or * for a suffix)"),
                    ));
                    continue;
                }
                let pat = P::parse(pth);
                let literal = match &pat {
                    P::Exact(e) | P::Prefix(e) => Some(e.clone()),
                    _ => None,
                };
                if let Some(l) = literal.filter(|l| l.starts_with('/'))
                    && meshfed_core::authz::normalize_path(&l).ok().as_deref() != Some(l.as_str())
                {
                    out.push(
                        Finding::error("PathNotNormalized", fp, format!("{pth:?} is not a normalized path, so no request could ever match it"))
                            .hint("requests are matched after normalization: no //, . or .. segments, no ;params, unreserved characters decoded"),
                    );
                    continue;
                }
                op.paths.push(pat);
            }
            for (x, m) in t.operation.methods.iter().flatten().enumerate() {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                    out.push(Finding::error(
                        "InvalidMethod",
                        op_path.key("methods").index(x),
                        format!("method {m:?} must be an upper-case token such as GET"),
                    ));
                    continue;
                }
                op.methods.push(m.clone());
            }
            to.push(op);
        }
        rules.push(Rule { from, to });
    }
    if errors_in(out) > before || !name_ok {
        return None;
    }
    Some(ScopedPolicy {
        namespace: namespace?,
        service,
        policy: Policy {
            name: p.name.clone(),
            action,
            rules,
        },
    })
}

fn duration_field(raw: &str, path: FieldPath, out: &mut Findings) -> Option<Duration> {
    meshfed_core::traffic::parse_duration(raw)
        .map_err(|e| out.push(Finding::error("InvalidDuration", path, e.to_string())))
        .ok()
}

fn share_field(
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

fn convert_traffic(
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
fn convert_routing(
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
fn string_match(
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
fn count_field(n: i64, min: i64, path: FieldPath, reason: &'static str, out: &mut Findings) -> u32 {
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

/// Reports every invalid label key or value under `path`; true when all are valid.
fn labels_ok(labels: &BTreeMap<String, String>, path: &FieldPath, out: &mut Findings) -> bool {
    let mut ok = true;
    for (k, v) in labels {
        let (reason, r) = match name::label_key(k) {
            Err(e) => ("InvalidLabelKey", Err(e)),
            Ok(()) => ("InvalidLabelValue", name::label_value(v)),
        };
        if let Err(e) = r {
            out.push(Finding::error(reason, path.key(k), e.to_string()));
            ok = false;
        }
    }
    ok
}

fn errors_in(out: &Findings) -> usize {
    out.iter()
        .filter(|f| f.severity == crate::diag::Severity::Error)
        .count()
}

fn convert_workload(
    w: &crate::mesh::MeshWorkload,
    p: &FieldPath,
    mesh_locality: Option<&Locality>,
    catalog: &mut Catalog,
    out: &mut Findings,
) {
    let name_ok = name::dns1123_label("workload name", &w.name)
        .map_err(|e| out.push(name_finding(p.key("name"), &e)))
        .is_ok();
    let namespace: Option<Namespace> = w
        .namespace
        .parse()
        .map_err(|e| out.push(name_finding(p.key("namespace"), &e)))
        .ok();
    let service: Option<meshfed_core::ServiceName> = w
        .service
        .parse()
        .map_err(|e| out.push(name_finding(p.key("service"), &e)))
        .ok();
    let account = w
        .service_account
        .clone()
        .unwrap_or_else(|| w.service.clone());
    let account_ok = name::dns1123_subdomain("service account", &account)
        .map_err(|e| out.push(name_finding(p.key("serviceAccount"), &e)))
        .is_ok();
    let inbound = socket_addr(&p.key("inbound"), &w.inbound, out);
    let app = socket_addr(&p.key("app"), &w.app, out);
    let labels = w.labels.clone().unwrap_or_default();
    let labels_ok = labels_ok(&labels, &p.key("labels"), out);
    let locality = match &w.locality {
        Some(l) => {
            match Locality::new(l.region.as_deref(), l.zone.as_deref(), l.subzone.as_deref()) {
                Ok(x) => x,
                Err(e) => {
                    out.push(Finding::error(
                        e.reason(),
                        p.key("locality").key(e.field()),
                        e.to_string(),
                    ));
                    return;
                }
            }
        }
        None => mesh_locality.cloned(),
    };
    let (true, Some(namespace), Some(service), true, Some(inbound), Some(app), true) = (
        name_ok, namespace, service, account_ok, inbound, app, labels_ok,
    ) else {
        return;
    };
    let key = meshfed_core::ServiceKey::new(namespace.clone(), service);
    if let Some(svc) = catalog.get(&key)
        && !svc.service_accounts.contains(&account)
    {
        out.push(
            Finding::warning(
                "ServiceAccountNotAdvertised",
                p.key("serviceAccount"),
                format!("{account:?} is not among the service's serviceAccounts"),
            )
            .hint("peers and clients expect the service's listed accounts; add it there"),
        );
    }
    let workload = meshfed_core::catalog::Workload {
        name: w.name.clone(),
        namespace,
        service_account: account,
        service: key,
        inbound,
        app,
        locality,
        labels,
    };
    match catalog.insert_workload(workload) {
        Ok(()) => {}
        Err("UnknownService") => out.push(
            Finding::error(
                "UnknownService",
                p.key("service"),
                format!("no service {:?} in namespace {:?}", w.service, w.namespace),
            )
            .hint("a workload backs a service listed under spec.services in its own namespace"),
        ),
        Err(reason) => out.push(Finding::error(
            reason,
            p.key("name"),
            format!("workload {}/{} is defined twice", w.namespace, w.name),
        )),
    }
}

fn convert_service(
    s: &crate::mesh::MeshService,
    p: &FieldPath,
    out: &mut Findings,
) -> Option<Service> {
    let mut ok = true;
    let name = s
        .name
        .parse()
        .map_err(|e| out.push(name_finding(p.key("name"), &e)))
        .ok();
    let namespace = s
        .namespace
        .parse()
        .map_err(|e| out.push(name_finding(p.key("namespace"), &e)))
        .ok();
    let labels = s.labels.clone().unwrap_or_default();
    ok &= labels_ok(&labels, &p.key("labels"), out);
    let mut ports = Vec::new();
    let (mut names, mut numbers) = (BTreeSet::new(), BTreeSet::new());
    for (j, sp) in s.ports.iter().flatten().enumerate() {
        let pp = p.key("ports").index(j);
        if let Err(e) = name::dns1123_label("port name", &sp.name) {
            out.push(name_finding(pp.key("name"), &e));
            ok = false;
        }
        let number = port(Some(sp.port), 0, pp.key("port"), out);
        let protocol = match sp.protocol.as_deref().unwrap_or("HTTP").parse::<Protocol>() {
            Ok(pr) => Some(pr),
            Err(e) => {
                out.push(Finding::error(
                    "UnknownProtocol",
                    pp.key("protocol"),
                    e.to_string(),
                ));
                None
            }
        };
        if !names.insert(sp.name.clone()) || !numbers.insert(sp.port) {
            out.push(Finding::error(
                "DuplicatePort",
                pp,
                format!("port {} / {:?} is defined twice", sp.port, sp.name),
            ));
            ok = false;
            continue;
        }
        match (number, protocol) {
            (Some(port), Some(protocol)) => ports.push(ServicePort {
                name: sp.name.clone(),
                port,
                protocol,
            }),
            _ => ok = false,
        }
    }
    let accounts = s
        .service_accounts
        .clone()
        .unwrap_or_else(|| vec![s.name.clone()]);
    for (j, sa) in accounts.iter().enumerate() {
        if let Err(e) = name::dns1123_subdomain("service account", sa) {
            out.push(name_finding(p.key("serviceAccounts").index(j), &e));
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    Some(Service {
        key: meshfed_core::ServiceKey::new(namespace?, name?),
        labels,
        ports,
        service_accounts: accounts,
    })
}
