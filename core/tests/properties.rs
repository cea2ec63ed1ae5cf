//! Property tests: identifiers round-trip; the export view never exposes a service no rule
//! selects; the import mapping is deterministic and independent of input order.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;

use meshfed_core::export::{ExportRule, ExportScope, ExportSelector, export_view_for};
use meshfed_core::import::{
    ImportConflict, ImportRule, ImportSet, RemoteService, combine, import_mapping,
};
use meshfed_core::mapping::{NameMapping, Pattern};
use meshfed_core::selector::{LabelSelector, Labels, RawRequirement};
use meshfed_core::{
    Catalog, Hostname, MeshName, Namespace, PeerName, Service, ServiceKey, ServiceName, SpiffeId,
    TrustDomain,
};
use proptest::prelude::*;

fn round_trips<T>(s: &str) -> Result<(), TestCaseError>
where
    T: std::str::FromStr + std::fmt::Display + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = s.parse::<T>() {
        let printed = v.to_string();
        prop_assert_eq!(&printed, s, "display differs from input");
        let again: T = printed
            .parse()
            .map_err(|_| TestCaseError::fail("printed form does not parse"))?;
        prop_assert_eq!(again, v);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn valid_ids_round_trip(
        td in "[a-z0-9][a-z0-9_-]{0,20}(\\.[a-z0-9_-]{1,10}){0,3}",
        ns in "[a-z]([a-z0-9-]{0,20}[a-z0-9])?",
        sa in "[a-zA-Z0-9._-]{1,20}",
        extra in proptest::collection::vec("[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,8}", 0..4),
    ) {
        let td: TrustDomain = td.parse().map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assume!(sa != "." && sa != "..");
        let mut path = format!("/ns/{ns}/sa/{sa}");
        for e in &extra {
            if e != "." && e != ".." {
                path.push('/');
                path.push_str(e);
            }
        }
        let id = format!("spiffe://{td}{path}");
        let parsed: SpiffeId = id.parse().map_err(|e| TestCaseError::fail(format!("{id}: {e}")))?;
        prop_assert_eq!(parsed.to_string(), id.clone());
        prop_assert_eq!(parsed.trust_domain(), &td);
        prop_assert_eq!(SpiffeId::from_client_id(&parsed.to_client_id()).ok(), Some(parsed.clone()));
        round_trips::<SpiffeId>(&id)?;
        round_trips::<Namespace>(&ns)?;
        round_trips::<ServiceName>(&ns)?;
        round_trips::<MeshName>(&ns)?;
        round_trips::<PeerName>(&ns)?;
        let key = format!("{ns}/{ns}");
        round_trips::<ServiceKey>(&key)?;
        round_trips::<Hostname>(&format!("{ns}.{ns}.svc.cluster.local"))?;
    }

    /// Whatever the input, anything that parses prints back to itself and re-parses equal.
    #[test]
    fn arbitrary_strings_never_break_round_trips(s in "\\PC{0,80}|[a-z0-9./:%@?#_-]{0,60}|spiffe://[a-zA-Z0-9./:%@?#_-]{0,60}") {
        round_trips::<SpiffeId>(&s)?;
        round_trips::<TrustDomain>(&s)?;
        round_trips::<PeerName>(&s)?;
        round_trips::<MeshName>(&s)?;
        round_trips::<Namespace>(&s)?;
        round_trips::<ServiceName>(&s)?;
        round_trips::<ServiceKey>(&s)?;
        round_trips::<Hostname>(&s)?;
    }
}

// ---- export view ------------------------------------------------------------------------

const NAMESPACES: &[&str] = &["shop", "shop-prod", "ops", "alpha-system"];
const NAMES: &[&str] = &["orders", "cart", "ledger", "search", "payments"];
const LABEL_KEYS: &[&str] = &["export", "tier"];
const LABEL_VALUES: &[&str] = &["true", "internal", "web"];

fn pattern_ns() -> impl Strategy<Value = Pattern<Namespace>> {
    prop_oneof![
        Just(Pattern::Any),
        proptest::sample::select(NAMESPACES)
            .prop_map(|s| Pattern::parse_namespace(s).unwrap_or(Pattern::Any)),
    ]
}

fn pattern_name() -> impl Strategy<Value = Pattern<ServiceName>> {
    prop_oneof![
        Just(Pattern::Any),
        proptest::sample::select(NAMES)
            .prop_map(|s| Pattern::parse_name(s).unwrap_or(Pattern::Any)),
    ]
}

fn mapping() -> impl Strategy<Value = NameMapping> {
    (pattern_ns(), pattern_name(), pattern_ns(), pattern_name()).prop_map(
        |(namespace, name, alias_namespace, alias_name)| NameMapping {
            namespace,
            name,
            alias_namespace,
            alias_name,
        },
    )
}

fn labels() -> impl Strategy<Value = Labels> {
    proptest::collection::btree_map(
        proptest::sample::select(LABEL_KEYS).prop_map(str::to_owned),
        proptest::sample::select(LABEL_VALUES).prop_map(str::to_owned),
        0..3,
    )
}

fn selector() -> impl Strategy<Value = LabelSelector> {
    (
        labels(),
        proptest::option::of((proptest::sample::select(LABEL_KEYS), 0usize..4)),
    )
        .prop_map(|(ml, expr)| {
            let values = vec!["internal".to_owned()];
            let exprs: Vec<RawRequirement<'_>> = match expr {
                None => vec![],
                Some((key, op)) => {
                    let (operator, values): (&str, &[String]) = match op {
                        0 => ("In", &values),
                        1 => ("NotIn", &values),
                        2 => ("Exists", &[]),
                        _ => ("DoesNotExist", &[]),
                    };
                    vec![RawRequirement {
                        key,
                        operator,
                        values,
                    }]
                }
            };
            LabelSelector::new(ml.iter(), exprs).unwrap_or_default()
        })
}

fn rules() -> impl Strategy<Value = Vec<ExportRule>> {
    let one = prop_oneof![
        mapping().prop_map(ExportSelector::Name),
        (
            pattern_ns(),
            selector(),
            proptest::collection::vec(mapping(), 0..3)
        )
            .prop_map(|(namespace, selector, aliases)| ExportSelector::Label {
                namespace,
                selector,
                aliases
            }),
    ];
    proptest::collection::vec(one, 0..5).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(index, selector)| ExportRule { index, selector })
            .collect()
    })
}

fn catalog() -> impl Strategy<Value = Catalog> {
    proptest::collection::vec(
        (
            proptest::sample::select(NAMESPACES),
            proptest::sample::select(NAMES),
            labels(),
        ),
        0..15,
    )
    .prop_map(|services| {
        let mut c = Catalog::new("cluster.local".parse().unwrap_or_else(|_| unreachable!()));
        for (ns, name, labels) in services {
            let Ok(key) = format!("{ns}/{name}").parse::<ServiceKey>() else {
                continue;
            };
            let _ = c.insert(Service {
                key,
                labels,
                ports: vec![],
                service_accounts: vec![name.to_owned()],
            });
        }
        c
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn export_view_exposes_only_selected_services(rules in rules(), catalog in catalog()) {
        let peer: PeerName = "beta-mesh".parse().map_err(|_| TestCaseError::fail("peer"))?;
        let cp: Namespace = "alpha-system".parse().map_err(|_| TestCaseError::fail("ns"))?;
        let view = export_view_for(ExportScope { peer: &peer, control_plane_namespace: Some(&cp) }, &rules, &catalog);
        for (host, s) in &view.services {
            let svc = catalog.get(&s.local);
            prop_assert!(svc.is_some(), "{} is not in the catalog", s.local);
            let svc = svc.unwrap_or_else(|| unreachable!());
            // The first rule that selects the service is the one recorded, with its name.
            let first = rules.iter().find_map(|r| r.exported_key(svc).map(|k| (r.index, k)));
            prop_assert_eq!(first, Some((s.rule, s.exported_as.clone())));
            prop_assert_ne!(&s.local.namespace, &cp, "control-plane services never export");
            prop_assert_eq!(host.as_str(), format!("{}.{}.svc.beta-mesh-exports.local", s.exported_as.name, s.exported_as.namespace));
        }
        // Every selected, non-reserved service is either exported or a named conflict loser.
        for svc in catalog.iter() {
            if svc.key.namespace == cp || rules.iter().all(|r| r.exported_key(svc).is_none()) {
                prop_assert!(view.services.values().all(|s| s.local != svc.key));
                continue;
            }
            let exported = view.services.values().any(|s| s.local == svc.key);
            let lost = view.conflicts.iter().any(|c| c.loser == svc.key);
            prop_assert!(exported ^ lost, "{} exported={exported} lost={lost}", svc.key);
        }
    }
}

// ---- import mapping ---------------------------------------------------------------------

fn remote_services(peer: &'static str) -> impl Strategy<Value = Vec<RemoteService>> {
    proptest::collection::vec(
        (
            proptest::sample::select(NAMESPACES),
            proptest::sample::select(NAMES),
        ),
        0..12,
    )
    .prop_map(move |v| {
        v.into_iter()
            .filter_map(|(ns, name)| {
                Some(RemoteService {
                    exported_name: format!("{name}.{ns}.svc.{peer}-exports.local")
                        .parse()
                        .ok()?,
                    key: format!("{ns}/{name}").parse().ok()?,
                    ports: vec![],
                    service_accounts: vec![],
                })
            })
            .collect()
    })
}

fn import_rules() -> impl Strategy<Value = Vec<ImportRule>> {
    proptest::collection::vec(
        (
            mapping(),
            proptest::option::of(proptest::sample::select(&["remote", "x.remote"][..])),
            any::<bool>(),
        ),
        0..5,
    )
    .prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(index, (mapping, suffix, local))| ImportRule {
                index,
                import_as_local: local && mapping.alias_namespace.fixed().is_some(),
                mapping,
                domain_suffix: suffix.and_then(|s| s.parse().ok()),
            })
            .collect()
    })
}

fn import_set(peer: &str, rules: Vec<ImportRule>) -> ImportSet {
    ImportSet {
        peer: peer.parse().unwrap_or_else(|_| unreachable!()),
        domain_suffix: None,
        locality: None,
        rules,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn import_mapping_is_deterministic_and_order_independent(
        rules_a in import_rules(),
        rules_b in import_rules(),
        exports_a in remote_services("one"),
        exports_b in remote_services("two"),
        catalog in catalog(),
        seed in any::<u64>(),
    ) {
        let set_a = import_set("peer-a", rules_a);
        let set_b = import_set("peer-b", rules_b);
        let m_a = import_mapping(&set_a, &exports_a, &catalog);
        prop_assert_eq!(&m_a, &import_mapping(&set_a, &exports_a, &catalog));
        let mut shuffled = exports_a.clone();
        shuffle(&mut shuffled, seed);
        prop_assert_eq!(&m_a, &import_mapping(&set_a, &shuffled, &catalog));

        let m_b = import_mapping(&set_b, &exports_b, &catalog);
        let plan = combine(&[m_a.clone(), m_b.clone()], &catalog);
        prop_assert_eq!(&plan, &combine(&[m_b.clone(), m_a.clone()], &catalog));

        // Each hostname is claimed once, except importAsLocal merges (one group per peer).
        let mut seen: BTreeMap<&Hostname, Vec<&str>> = BTreeMap::new();
        for s in plan.services.values() {
            for g in &s.groups {
                seen.entry(&s.hostname).or_default().push(g.peer.as_str());
            }
            if s.groups.len() > 1 {
                prop_assert!(s.groups.iter().all(|g| g.import_as_local));
            }
            // Non-local imports never take a name in the local cluster domain.
            if s.groups.iter().any(|g| !g.import_as_local) {
                prop_assert!(!catalog.is_cluster_local(&s.hostname));
            }
        }
        for peers in seen.values() {
            let mut sorted = peers.clone();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), peers.len(), "a peer holds two groups of one name");
        }
        // Every export is imported, unmatched, or a conflict loser: nothing vanishes.
        for (m, exports) in [(&m_a, &exports_a), (&m_b, &exports_b)] {
            for e in exports {
                let imported = m.imports.iter().any(|i| i.exported_name == e.exported_name);
                let unmatched = m.unmatched.contains(&e.exported_name);
                let lost = m.conflicts.iter().any(|c| match c {
                    ImportConflict::DuplicateImportedHostname { loser, .. } => loser == &e.exported_name,
                    ImportConflict::ShadowsLocalService { exported_name, .. }
                    | ImportConflict::ImportedNameTooLong { exported_name, .. } => exported_name == &e.exported_name,
                });
                prop_assert!(imported || unmatched || lost, "{} vanished", e.exported_name);
            }
        }
    }
}

fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = usize::try_from(seed >> 33).unwrap_or(0) % (i + 1);
        v.swap(i, j);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(800))]

    /// F-HTTP-1: normalizing is idempotent, and what passes never contains a dot segment,
    /// an empty segment, an encoded separator or matrix parameters.
    #[test]
    fn path_normalization_is_idempotent(raw in "(/|//|/\\.|/\\.\\.|/%2[eEfF]|/%5[cC]|/%00|/%41|;x=1|/admin|/a|\\?|#|\\\\)*") {
        if let Ok(once) = meshfed_core::authz::normalize_path(&raw) {
            let twice = meshfed_core::authz::normalize_path(&once);
            prop_assert_eq!(twice.as_deref(), Ok(&*once));
            prop_assert!(!once.contains("//") && !once.contains("/./") && !once.contains("/../") && !once.ends_with("/.."));
            prop_assert!(!once.to_ascii_lowercase().contains("%2f") && !once.to_ascii_lowercase().contains("%5c"));
            prop_assert!(!once.contains(';'));
        }
    }
}
