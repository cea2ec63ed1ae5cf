//! Workloads and services of a mesh file.

use super::*;

/// Reports every invalid label key or value under `path`; true when all are valid.
pub(super) fn labels_ok(
    labels: &BTreeMap<String, String>,
    path: &FieldPath,
    out: &mut Findings,
) -> bool {
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

pub(super) fn errors_in(out: &Findings) -> usize {
    out.iter()
        .filter(|f| f.severity == crate::diag::Severity::Error)
        .count()
}

pub(super) fn convert_workload(
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

pub(super) fn convert_service(
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
