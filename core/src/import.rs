//! The import mapping: a peer's exported services → local hostnames.
//!
//! Rules are matched against the exported (already aliased) namespace/name; the first match
//! wins. The local hostname is, in order: `<name>.<alias-ns>.svc.<cluster domain>` for
//! `importAsLocal`; `<name>.<ns>.<suffix>` with the rule's or the set's `domainSuffix`;
//! otherwise `<name>.<ns>.svc.<peer>-imports.local`.
//!
//! Everything here is deterministic and independent of input order: inputs are sorted before
//! use, and conflicts are resolved by stable keys and reported as values.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::catalog::{Catalog, ServicePort};
use crate::id::{Hostname, PeerName, ServiceKey, SpiffeId};
use crate::locality::Locality;
use crate::mapping::NameMapping;

/// One import rule; `index` is its position in `spec.importRules`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportRule {
    pub index: usize,
    pub mapping: NameMapping,
    pub domain_suffix: Option<Hostname>,
    pub import_as_local: bool,
}

/// An `ImportedServiceSet`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportSet {
    /// The importer's name for the exporting peer (`Q` in `svc.<Q>-imports.local`).
    pub peer: PeerName,
    pub domain_suffix: Option<Hostname>,
    pub locality: Option<Locality>,
    pub rules: Vec<ImportRule>,
}

/// A service a peer exports to us, as it arrives over peering.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteService {
    /// The peer's FQDN for it (`<name>.<ns>.svc.<our name>-exports.local`).
    pub exported_name: Hostname,
    /// Exported namespace/name (after the peer's aliasing).
    pub key: ServiceKey,
    pub ports: Vec<ServicePort>,
    /// Identities the peer says serve it.
    pub service_accounts: Vec<SpiffeId>,
}

/// One remote service imported under a local hostname.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportedService {
    pub peer: PeerName,
    pub exported_name: Hostname,
    /// Local namespace/name after the import alias.
    pub local_key: ServiceKey,
    pub hostname: Hostname,
    pub rule: usize,
    pub import_as_local: bool,
    pub locality: Option<Locality>,
    pub ports: Vec<ServicePort>,
    pub service_accounts: Vec<SpiffeId>,
}

/// A clash between claims on one local hostname; the loser is not imported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all_fields = "camelCase")]
pub enum ImportConflict {
    /// Two exports (of one peer, or of two peers) map to one non-local hostname.
    DuplicateImportedHostname {
        hostname: Hostname,
        winner_peer: PeerName,
        winner: Hostname,
        loser_peer: PeerName,
        loser: Hostname,
    },
    /// A non-`importAsLocal` import would take a name in the local cluster domain.
    ShadowsLocalService {
        hostname: Hostname,
        peer: PeerName,
        exported_name: Hostname,
    },
    /// The computed hostname is not a valid DNS name (too long).
    ImportedNameTooLong {
        peer: PeerName,
        exported_name: Hostname,
    },
}

impl ImportConflict {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::DuplicateImportedHostname { .. } => "DuplicateImportedHostname",
            Self::ShadowsLocalService { .. } => "ShadowsLocalService",
            Self::ImportedNameTooLong { .. } => "ImportedNameTooLong",
        }
    }

    /// The peer whose import lost.
    pub fn peer(&self) -> &PeerName {
        match self {
            Self::DuplicateImportedHostname { loser_peer, .. } => loser_peer,
            Self::ShadowsLocalService { peer, .. } | Self::ImportedNameTooLong { peer, .. } => peer,
        }
    }
}

/// What one `ImportedServiceSet` does with one peer's exports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportMapping {
    pub peer: PeerName,
    /// Imported services, sorted by exported name.
    pub imports: Vec<ImportedService>,
    /// Exported names no rule matched (counted in a condition, listed in status).
    pub unmatched: Vec<Hostname>,
    pub conflicts: Vec<ImportConflict>,
}

fn imports_suffix(peer: &PeerName) -> String {
    format!("svc.{peer}-imports.local")
}

impl ImportSet {
    fn hostname_for(
        &self,
        rule: &ImportRule,
        key: &ServiceKey,
        catalog: &Catalog,
    ) -> Option<Hostname> {
        if rule.import_as_local {
            return key.hostname_in(catalog.cluster_domain()).ok();
        }
        let suffix = match rule.domain_suffix.as_ref().or(self.domain_suffix.as_ref()) {
            Some(s) => s.as_str().to_owned(),
            None => imports_suffix(&self.peer),
        };
        Hostname::join(&[key.name.as_str(), key.namespace.as_str(), &suffix]).ok()
    }
}

/// Maps a peer's exports through `set`. `catalog` is the importer's own catalog (for the
/// cluster domain and to keep non-local imports out of local names).
pub fn import_mapping(
    set: &ImportSet,
    exports: &[RemoteService],
    catalog: &Catalog,
) -> ImportMapping {
    let mut sorted: Vec<&RemoteService> = exports.iter().collect();
    sorted.sort();
    sorted.dedup_by(|a, b| a.exported_name == b.exported_name);
    let mut claims: BTreeMap<Hostname, Vec<ImportedService>> = BTreeMap::new();
    let mut unmatched = Vec::new();
    let mut conflicts = Vec::new();
    for remote in sorted {
        let Some((rule, local_key)) = set
            .rules
            .iter()
            .find_map(|r| r.mapping.apply(&remote.key).map(|k| (r, k)))
        else {
            unmatched.push(remote.exported_name.clone());
            continue;
        };
        let Some(hostname) = set.hostname_for(rule, &local_key, catalog) else {
            conflicts.push(ImportConflict::ImportedNameTooLong {
                peer: set.peer.clone(),
                exported_name: remote.exported_name.clone(),
            });
            continue;
        };
        if !rule.import_as_local && catalog.is_cluster_local(&hostname) {
            conflicts.push(ImportConflict::ShadowsLocalService {
                hostname,
                peer: set.peer.clone(),
                exported_name: remote.exported_name.clone(),
            });
            continue;
        }
        claims
            .entry(hostname.clone())
            .or_default()
            .push(ImportedService {
                peer: set.peer.clone(),
                exported_name: remote.exported_name.clone(),
                local_key,
                hostname,
                rule: rule.index,
                import_as_local: rule.import_as_local,
                locality: set.locality.clone(),
                ports: remote.ports.clone(),
                service_accounts: remote.service_accounts.clone(),
            });
    }
    let mut imports = Vec::new();
    for (hostname, mut claimants) in claims {
        claimants.sort_by(|a, b| (a.rule, &a.exported_name).cmp(&(b.rule, &b.exported_name)));
        let mut it = claimants.into_iter();
        let Some(winner) = it.next() else { continue };
        for loser in it {
            conflicts.push(ImportConflict::DuplicateImportedHostname {
                hostname: hostname.clone(),
                winner_peer: winner.peer.clone(),
                winner: winner.exported_name.clone(),
                loser_peer: loser.peer,
                loser: loser.exported_name,
            });
        }
        imports.push(winner);
    }
    imports.sort_by(|a, b| a.exported_name.cmp(&b.exported_name));
    ImportMapping {
        peer: set.peer.clone(),
        imports,
        unmatched,
        conflicts,
    }
}

/// One local hostname after all peers' imports are combined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedService {
    pub hostname: Hostname,
    /// The local service an `importAsLocal` import merges with, if it exists.
    pub local: Option<ServiceKey>,
    /// One endpoint group per peer, sorted by peer name.
    pub groups: Vec<ImportedService>,
}

impl PlannedService {
    /// True when this hostname merges a peer's endpoints into a local service.
    pub fn is_merge(&self) -> bool {
        self.local.is_some()
    }
}

/// All imports of a mesh, across peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportPlan {
    pub services: BTreeMap<Hostname, PlannedService>,
    pub conflicts: Vec<ImportConflict>,
}

/// Combines per-peer mappings. `importAsLocal` imports of one name from several peers merge
/// (one group each); any other hostname claimed by two peers goes to the lexically first peer.
pub fn combine(mappings: &[ImportMapping], catalog: &Catalog) -> ImportPlan {
    let mut ordered: Vec<&ImportMapping> = mappings.iter().collect();
    ordered.sort_by(|a, b| a.peer.cmp(&b.peer));
    let mut services: BTreeMap<Hostname, PlannedService> = BTreeMap::new();
    let mut conflicts = Vec::new();
    for mapping in ordered {
        conflicts.extend(mapping.conflicts.iter().cloned());
        for import in &mapping.imports {
            let planned =
                services
                    .entry(import.hostname.clone())
                    .or_insert_with(|| PlannedService {
                        hostname: import.hostname.clone(),
                        local: catalog.by_hostname(&import.hostname).map(|s| s.key.clone()),
                        groups: Vec::new(),
                    });
            match planned.groups.first() {
                Some(first) if !(first.import_as_local && import.import_as_local) => {
                    conflicts.push(ImportConflict::DuplicateImportedHostname {
                        hostname: import.hostname.clone(),
                        winner_peer: first.peer.clone(),
                        winner: first.exported_name.clone(),
                        loser_peer: import.peer.clone(),
                        loser: import.exported_name.clone(),
                    });
                }
                _ => planned.groups.push(import.clone()),
            }
        }
    }
    ImportPlan {
        services,
        conflicts,
    }
}

/// One imported service as a sidecar needs it, resolved from an import plan: which local
/// hostname, which peer and exported name (the TLS server name at the egress), which identities
/// may serve it, which egress gateway carries it, and what the peer says of its health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportedRoute {
    pub hostname: Hostname,
    pub peer: PeerName,
    pub exported_name: Hostname,
    /// The peer's advertised service accounts for it.
    pub identities: Vec<SpiffeId>,
    /// This mesh's egress gateway towards the peer.
    pub egress: std::net::SocketAddr,
    pub import_as_local: bool,
    /// Calls use HTTP/2 (its HTTP ports are all HTTP2 or GRPC).
    pub http2: bool,
    pub locality: Option<Locality>,
    /// The peer's report: healthy and total endpoints; `None` when it has not said.
    pub health: Option<(u32, u32)>,
}

/// The routes of every planned import whose peer has an egress gateway (`egress`); `health`
/// gives the peer's report for an exported name. Imports of a peer without an egress are
/// returned apart, as (hostname, peer), so the caller can say why they are missing.
pub fn routes_from_plan(
    plan: &ImportPlan,
    egress: impl Fn(&PeerName) -> Option<std::net::SocketAddr>,
    health: impl Fn(&PeerName, &Hostname) -> Option<(u32, u32)>,
) -> (Vec<ImportedRoute>, Vec<(Hostname, PeerName)>) {
    let mut routes = Vec::new();
    let mut missing = Vec::new();
    for p in plan.services.values() {
        for g in &p.groups {
            let Some(addr) = egress(&g.peer) else {
                missing.push((p.hostname.clone(), g.peer.clone()));
                continue;
            };
            routes.push(ImportedRoute {
                hostname: p.hostname.clone(),
                peer: g.peer.clone(),
                exported_name: g.exported_name.clone(),
                identities: g.service_accounts.clone(),
                egress: addr,
                import_as_local: g.import_as_local,
                http2: crate::catalog::ports_speak_http2(&g.ports),
                locality: g.locality.clone(),
                health: health(&g.peer, &g.exported_name),
            });
        }
    }
    (routes, missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Service;
    use crate::mapping::Pattern;
    use crate::selector::Labels;

    fn remote(peer_suffix: &str, key: &str) -> RemoteService {
        let key: ServiceKey = key.parse().unwrap();
        RemoteService {
            exported_name: format!(
                "{}.{}.svc.{peer_suffix}-exports.local",
                key.name, key.namespace
            )
            .parse()
            .unwrap(),
            key,
            ports: vec![],
            service_accounts: vec![],
        }
    }

    fn rule(
        index: usize,
        ns: &str,
        name: &str,
        alias: Option<(&str, &str)>,
        suffix: Option<&str>,
        local: bool,
    ) -> ImportRule {
        let (ans, aname) = alias.unwrap_or(("", ""));
        ImportRule {
            index,
            mapping: NameMapping {
                namespace: Pattern::parse_namespace(ns).unwrap(),
                name: Pattern::parse_name(name).unwrap(),
                alias_namespace: Pattern::parse_namespace(ans).unwrap(),
                alias_name: Pattern::parse_name(aname).unwrap(),
            },
            domain_suffix: suffix.map(|s| s.parse().unwrap()),
            import_as_local: local,
        }
    }

    fn local_catalog() -> Catalog {
        let mut c = Catalog::new("cluster.local".parse().unwrap());
        c.insert(Service {
            key: "shop/orders".parse().unwrap(),
            labels: Labels::new(),
            ports: vec![],
            service_accounts: vec![],
        })
        .unwrap();
        c
    }

    fn hosts(m: &ImportMapping) -> Vec<&str> {
        m.imports.iter().map(|i| i.hostname.as_str()).collect()
    }

    #[test]
    fn reference_example() {
        let set = ImportSet {
            peer: "alpha-mesh".parse().unwrap(),
            domain_suffix: None,
            locality: Locality::new(Some("eu-central"), Some("eu-central-1a"), None).unwrap(),
            rules: vec![
                rule(0, "shop", "orders", Some(("shop", "orders")), None, true),
                rule(1, "shop", "*", None, Some("alpha.remote"), false),
            ],
        };
        let exports = vec![
            remote("beta-mesh", "shop/orders"),
            remote("beta-mesh", "shop/cart"),
            remote("beta-mesh", "ops/x"),
        ];
        let cat = local_catalog();
        let m = import_mapping(&set, &exports, &cat);
        assert_eq!(
            hosts(&m),
            vec!["cart.shop.alpha.remote", "orders.shop.svc.cluster.local"]
        );
        assert_eq!(m.unmatched.len(), 1);
        let plan = combine(&[m], &cat);
        let merged = &plan.services[&"orders.shop.svc.cluster.local".parse::<Hostname>().unwrap()];
        assert!(merged.is_merge());
        assert_eq!(
            merged.groups[0].locality.as_ref().unwrap().to_string(),
            "eu-central/eu-central-1a"
        );
    }

    #[test]
    fn default_suffix_uses_importer_name_for_peer() {
        let set = ImportSet {
            peer: "west-mesh".parse().unwrap(),
            domain_suffix: None,
            locality: None,
            rules: vec![rule(0, "a", "*", None, None, false)],
        };
        let m = import_mapping(&set, &[remote("east-mesh", "a/httpbin")], &local_catalog());
        assert_eq!(hosts(&m), vec!["httpbin.a.svc.west-mesh-imports.local"]);
    }

    #[test]
    fn conflicts_within_and_across_peers() {
        let cat = local_catalog();
        // Within one peer: two exports aliased to one name.
        let set = ImportSet {
            peer: "p1".parse().unwrap(),
            domain_suffix: Some("remote".parse().unwrap()),
            locality: None,
            rules: vec![rule(0, "*", "*", Some(("x", "one")), None, false)],
        };
        let m1 = import_mapping(&set, &[remote("q", "a/s1"), remote("q", "b/s2")], &cat);
        assert_eq!(m1.imports.len(), 1);
        assert_eq!(m1.conflicts.len(), 1);
        assert_eq!(m1.conflicts[0].reason(), "DuplicateImportedHostname");
        // Across peers: same non-local name; first peer by name wins.
        let set2 = ImportSet {
            peer: "p0".parse().unwrap(),
            ..set.clone()
        };
        let m0 = import_mapping(&set2, &[remote("q", "c/s3")], &cat);
        let plan = combine(&[m1.clone(), m0.clone()], &cat);
        let one = &plan.services[&"one.x.remote".parse::<Hostname>().unwrap()];
        assert_eq!(one.groups.len(), 1);
        assert_eq!(one.groups[0].peer.as_str(), "p0");
        assert_eq!(plan, combine(&[m0, m1], &cat));
    }

    #[test]
    fn import_as_local_from_two_peers_merges() {
        let cat = local_catalog();
        let mk = |peer: &str| ImportSet {
            peer: peer.parse().unwrap(),
            domain_suffix: None,
            locality: None,
            rules: vec![rule(0, "shop", "orders", Some(("shop", "")), None, true)],
        };
        let a = import_mapping(&mk("a"), &[remote("x", "shop/orders")], &cat);
        let b = import_mapping(&mk("b"), &[remote("y", "shop/orders")], &cat);
        let plan = combine(&[b, a], &cat);
        assert!(plan.conflicts.is_empty());
        let p = plan.services.values().next().unwrap();
        assert_eq!(
            p.groups.iter().map(|g| g.peer.as_str()).collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        assert_eq!(p.local.as_ref().unwrap().to_string(), "shop/orders");
    }

    #[test]
    fn non_local_import_may_not_take_local_names() {
        let cat = local_catalog();
        let set = ImportSet {
            peer: "p".parse().unwrap(),
            domain_suffix: Some("svc.cluster.local".parse().unwrap()),
            locality: None,
            rules: vec![rule(0, "*", "*", None, None, false)],
        };
        let m = import_mapping(&set, &[remote("q", "shop/orders")], &cat);
        assert!(m.imports.is_empty());
        assert_eq!(m.conflicts[0].reason(), "ShadowsLocalService");
    }
}
