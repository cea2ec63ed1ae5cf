//! Authorization policies of a mesh file.

use super::*;

pub(super) fn convert_policy(
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
