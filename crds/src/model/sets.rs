//! `ExportedServiceSet` and `ImportedServiceSet`: their rules as `core` export and import rules.

use super::*;

pub(super) fn pattern_part<T>(
    s: Option<&str>,
    parse: fn(&str) -> Result<Pattern<T>, PatternError>,
    path: FieldPath,
    out: &mut Findings,
) -> Option<Pattern<T>> {
    parse(s.unwrap_or(""))
        .map_err(|e| out.push(pattern_finding(path, &e)))
        .ok()
}

/// Converts a `nameSelector` (or an alias entry) at `path`; `one_namespace` when the rule
/// around it already selects a single namespace (a label selector's fixed `namespace`), so
/// an alias namespace merges nothing.
pub(super) fn mapping(
    m: &ServiceNameMapping,
    path: &FieldPath,
    one_namespace: bool,
    out: &mut Findings,
) -> Option<NameMapping> {
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
    let collapses = if one_namespace {
        mapping.alias_name.fixed().is_some() && mapping.name == Pattern::Any
    } else {
        mapping.collapses()
    };
    if collapses {
        out.push(
            Finding::warning("AliasCollapses", path.key("alias"), "the alias gives every matching service the same name; only one of them can be used")
                .hint("select one service by name, or alias only the namespace"),
        );
    }
    Some(mapping)
}

/// True when rule `earlier` selects at least everything `later` does (name selectors only).
pub(super) fn covers(earlier: &NameMapping, later: &NameMapping) -> bool {
    let ns = earlier.namespace == Pattern::Any || earlier.namespace == later.namespace;
    let name = earlier.name == Pattern::Any || earlier.name == later.name;
    ns && name
}

pub(super) fn shadowing(mappings: &[(usize, NameMapping)], path: &FieldPath, out: &mut Findings) {
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

pub(super) fn too_many(n: usize, path: &FieldPath, out: &mut Findings) -> bool {
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

pub(super) fn rule_type_error(t: &str, path: FieldPath, allowed: &str) -> Finding {
    Finding::error("UnknownRuleType", path, format!("rule type {t:?} is not {allowed}"))
        .hint("Maistra skipped such rules with a log line; meshfed rejects them so nothing is silently ignored")
}

pub(super) fn export_rule(
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
            ExportSelector::Name(mapping(ns, &p.key("nameSelector"), false, out)?)
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
            let everything =
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector::default();
            let raw = ls.selector.as_ref().unwrap_or(&everything);
            let exprs = raw.match_expressions.as_deref().unwrap_or_default();
            let selector = LabelSelector::new(
                raw.match_labels.as_ref().unwrap_or(&empty),
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
                let one_namespace = namespace.as_ref().is_some_and(|n| *n != Pattern::Any);
                match mapping(a, &lp.key("aliases").index(j), one_namespace, out) {
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

pub(super) fn domain_suffix(
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
            let Some(m) = mapping(ns, &p.key("nameSelector"), false, out) else {
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
