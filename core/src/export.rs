//! The export view: which local services one peer may see, and under which names.
//!
//! Rules are tried in order and the first that yields a name wins. Two local services that
//! end up under one exported name are a conflict: the earliest rule wins, then the lexically
//! smaller service key, and the loser is reported (Maistra let one silently hide the other).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::catalog::{Catalog, Service, ServicePort};
use crate::id::{Hostname, Namespace, PeerName, ServiceKey};
use crate::mapping::{NameMapping, Pattern};
use crate::selector::LabelSelector;

/// How an export rule selects services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum ExportSelector {
    /// `NameSelector`: exact or wildcard namespace/name with an optional alias.
    #[serde(rename = "NameSelector")]
    Name(NameMapping),
    /// `LabelSelector`: a namespace filter and label selector, then the first fitting alias.
    #[serde(rename = "LabelSelector")]
    Label {
        namespace: Pattern<Namespace>,
        selector: LabelSelector,
        aliases: Vec<NameMapping>,
    },
}

/// One export rule; `index` is its position in `spec.exportRules`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportRule {
    pub index: usize,
    pub selector: ExportSelector,
}

impl ExportRule {
    /// The name `service` is exported under, if this rule selects it.
    pub fn exported_key(&self, service: &Service) -> Option<ServiceKey> {
        match &self.selector {
            ExportSelector::Name(m) => m.apply(&service.key),
            ExportSelector::Label {
                namespace,
                selector,
                aliases,
            } => {
                if !namespace.matches(&service.key.namespace) || !selector.matches(&service.labels)
                {
                    return None;
                }
                Some(
                    aliases
                        .iter()
                        .find_map(|a| a.apply(&service.key))
                        .unwrap_or_else(|| service.key.clone()),
                )
            }
        }
    }

    /// True when the rule selects every service in every namespace (flagged by validation).
    pub fn selects_everything(&self) -> bool {
        match &self.selector {
            ExportSelector::Name(m) => m.selects_all(),
            ExportSelector::Label {
                namespace,
                selector,
                ..
            } => *namespace == Pattern::Any && selector.is_empty(),
        }
    }
}

/// The context an export view is computed in.
#[derive(Debug, Clone, Copy)]
pub struct ExportScope<'a> {
    /// The exporter's name for the importing peer (`P` in `<name>.<ns>.svc.<P>-exports.local`).
    pub peer: &'a PeerName,
    /// The control-plane namespace; its services (gateways, discovery) are never exported.
    pub control_plane_namespace: Option<&'a Namespace>,
}

/// A local service as the peer sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportedService {
    /// The FQDN sent to the peer: `<name>.<ns>.svc.<peer>-exports.local`.
    pub exported_name: Hostname,
    /// Namespace and name after aliasing.
    pub exported_as: ServiceKey,
    pub local: ServiceKey,
    pub local_hostname: Hostname,
    /// Index of the rule that exported it.
    pub rule: usize,
    pub ports: Vec<ServicePort>,
}

/// Two local services were mapped to one exported name; the loser is not exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportConflict {
    pub exported_name: Hostname,
    pub winner: ServiceKey,
    pub winner_rule: usize,
    pub loser: ServiceKey,
    pub loser_rule: usize,
}

impl ExportConflict {
    pub const REASON: &'static str = "DuplicateExportedName";
}

/// A service a rule selected but that is not exported, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SkippedExport {
    pub local: ServiceKey,
    pub rule: usize,
    /// Stable token: `ReservedService` or `ExportedNameTooLong`.
    pub reason: &'static str,
}

/// What one peer may see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportView {
    pub peer: PeerName,
    /// Keyed by exported name.
    pub services: BTreeMap<Hostname, ExportedService>,
    pub conflicts: Vec<ExportConflict>,
    pub skipped: Vec<SkippedExport>,
}

impl ExportView {
    /// True when `host` (canonical form) is exported to this peer.
    pub fn exports(&self, host: &Hostname) -> bool {
        self.services.contains_key(host)
    }
}

/// `<name>.<ns>.svc.<peer>-exports.local`.
pub fn exported_hostname(
    peer: &PeerName,
    key: &ServiceKey,
) -> Result<Hostname, crate::name::NameError> {
    Hostname::join(&[
        key.name.as_str(),
        key.namespace.as_str(),
        "svc",
        &format!("{peer}-exports"),
        "local",
    ])
}

fn is_reserved(key: &ServiceKey, scope: &ExportScope<'_>) -> bool {
    scope.control_plane_namespace == Some(&key.namespace)
        || (key.namespace.as_str() == "default" && key.name.as_str() == "kubernetes")
        || key.namespace.as_str().starts_with("kube-")
}

/// Computes what `scope.peer` may see of `catalog` under `rules`.
pub fn export_view_for(
    scope: ExportScope<'_>,
    rules: &[ExportRule],
    catalog: &Catalog,
) -> ExportView {
    let mut claims: BTreeMap<Hostname, Vec<(usize, &Service, ServiceKey)>> = BTreeMap::new();
    let mut skipped = Vec::new();
    for service in catalog.iter() {
        let Some((rule, exported_as)) = rules
            .iter()
            .find_map(|r| r.exported_key(service).map(|k| (r.index, k)))
        else {
            continue;
        };
        if is_reserved(&service.key, &scope) {
            skipped.push(SkippedExport {
                local: service.key.clone(),
                rule,
                reason: "ReservedService",
            });
            continue;
        }
        match exported_hostname(scope.peer, &exported_as) {
            Ok(host) => claims
                .entry(host)
                .or_default()
                .push((rule, service, exported_as)),
            Err(_) => skipped.push(SkippedExport {
                local: service.key.clone(),
                rule,
                reason: "ExportedNameTooLong",
            }),
        }
    }
    let mut services = BTreeMap::new();
    let mut conflicts = Vec::new();
    for (host, mut claimants) in claims {
        claimants.sort_by(|a, b| (a.0, &a.1.key).cmp(&(b.0, &b.1.key)));
        let mut it = claimants.into_iter();
        let Some((rule, winner, exported_as)) = it.next() else {
            continue;
        };
        for (loser_rule, loser, _) in it {
            conflicts.push(ExportConflict {
                exported_name: host.clone(),
                winner: winner.key.clone(),
                winner_rule: rule,
                loser: loser.key.clone(),
                loser_rule,
            });
        }
        let Ok(local_hostname) = catalog.hostname_of(&winner.key) else {
            skipped.push(SkippedExport {
                local: winner.key.clone(),
                rule,
                reason: "ExportedNameTooLong",
            });
            continue;
        };
        services.insert(
            host.clone(),
            ExportedService {
                exported_name: host,
                exported_as,
                local: winner.key.clone(),
                local_hostname,
                rule,
                ports: winner.ports.clone(),
            },
        );
    }
    ExportView {
        peer: scope.peer.clone(),
        services,
        conflicts,
        skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::{Labels, RawRequirement};

    fn svc(key: &str, labels: &[(&str, &str)]) -> Service {
        Service {
            key: key.parse().unwrap(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Labels>(),
            ports: vec![],
            service_accounts: vec![],
        }
    }

    fn catalog(services: Vec<Service>) -> Catalog {
        let mut c = Catalog::new("cluster.local".parse().unwrap());
        for s in services {
            c.insert(s).unwrap();
        }
        c
    }

    fn name_rule(index: usize, ns: &str, name: &str, ans: &str, aname: &str) -> ExportRule {
        ExportRule {
            index,
            selector: ExportSelector::Name(NameMapping {
                namespace: Pattern::parse_namespace(ns).unwrap(),
                name: Pattern::parse_name(name).unwrap(),
                alias_namespace: Pattern::parse_namespace(ans).unwrap(),
                alias_name: Pattern::parse_name(aname).unwrap(),
            }),
        }
    }

    #[test]
    fn reference_example() {
        let cat = catalog(vec![
            svc("shop-prod/orders-v2", &[]),
            svc("shop-prod/cart", &[("federation-export", "true")]),
            svc(
                "shop-prod/ledger",
                &[("federation-export", "true"), ("tier", "internal")],
            ),
            svc("shop-prod/search", &[]),
        ]);
        let vals = vec!["internal".to_string()];
        let ml: Labels = [("federation-export".to_string(), "true".to_string())].into();
        let label_rule = ExportRule {
            index: 1,
            selector: ExportSelector::Label {
                namespace: Pattern::parse_namespace("shop-prod").unwrap(),
                selector: LabelSelector::new(
                    ml.iter(),
                    [RawRequirement {
                        key: "tier",
                        operator: "NotIn",
                        values: &vals,
                    }],
                )
                .unwrap(),
                aliases: vec![NameMapping {
                    namespace: Pattern::Any,
                    name: Pattern::Any,
                    alias_namespace: Pattern::parse_namespace("shop").unwrap(),
                    alias_name: Pattern::Any,
                }],
            },
        };
        let rules = vec![
            name_rule(0, "shop-prod", "orders-v2", "shop", "orders"),
            label_rule,
        ];
        let peer: PeerName = "beta-mesh".parse().unwrap();
        let view = export_view_for(
            ExportScope {
                peer: &peer,
                control_plane_namespace: None,
            },
            &rules,
            &cat,
        );
        let names: Vec<_> = view.services.keys().map(|h| h.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "cart.shop.svc.beta-mesh-exports.local",
                "orders.shop.svc.beta-mesh-exports.local"
            ]
        );
        let orders = &view.services[&"orders.shop.svc.beta-mesh-exports.local"
            .parse::<Hostname>()
            .unwrap()];
        assert_eq!(orders.local.to_string(), "shop-prod/orders-v2");
        assert_eq!(
            orders.local_hostname.as_str(),
            "orders-v2.shop-prod.svc.cluster.local"
        );
        assert_eq!(orders.rule, 0);
        assert!(view.conflicts.is_empty());
    }

    #[test]
    fn conflicts_pick_earliest_rule_then_key() {
        let cat = catalog(vec![svc("a/x", &[]), svc("b/x", &[]), svc("c/y", &[])]);
        let rules = vec![
            name_rule(0, "c", "y", "z", "x"),
            name_rule(1, "*", "x", "z", "*"),
        ];
        let peer: PeerName = "p".parse().unwrap();
        let view = export_view_for(
            ExportScope {
                peer: &peer,
                control_plane_namespace: None,
            },
            &rules,
            &cat,
        );
        assert_eq!(view.services.len(), 1);
        let (_, winner) = view.services.iter().next().unwrap();
        assert_eq!(winner.local.to_string(), "c/y");
        let losers: Vec<_> = view.conflicts.iter().map(|c| c.loser.to_string()).collect();
        assert_eq!(losers, vec!["a/x", "b/x"]);
    }

    #[test]
    fn reserved_services_never_export() {
        let cat = catalog(vec![
            svc("alpha-system/discovery", &[]),
            svc("default/kubernetes", &[]),
            svc("shop/a", &[]),
        ]);
        let rules = vec![name_rule(0, "*", "*", "*", "*")];
        let peer: PeerName = "p".parse().unwrap();
        let ns: Namespace = "alpha-system".parse().unwrap();
        let view = export_view_for(
            ExportScope {
                peer: &peer,
                control_plane_namespace: Some(&ns),
            },
            &rules,
            &cat,
        );
        assert_eq!(view.services.len(), 1);
        assert_eq!(view.skipped.len(), 2);
        assert!(view.skipped.iter().all(|s| s.reason == "ReservedService"));
        assert!(rules[0].selects_everything());
    }
}
