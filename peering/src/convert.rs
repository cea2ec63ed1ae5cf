//! Wire ↔ core conversion. Everything a peer sends is parsed like hostile bytes: names must be
//! canonical DNS names, identities valid SPIFFE workload IDs *of the peer's own trust domain*,
//! ports in range and unique, counts bounded. A bad service refuses the whole message (NACK);
//! the last good state stays.

use std::collections::BTreeSet;

use meshfed_api::peering as pb;
use meshfed_core::import::RemoteService;
use meshfed_core::stream::{Delta, Limits, Nack, SnapshotChunk};
use meshfed_core::{Hostname, Protocol, ServiceKey, ServicePort, SpiffeId, TrustDomain};

fn nack(version: u64, reason: &'static str, detail: impl Into<String>) -> Nack {
    Nack {
        version,
        reason,
        detail: detail.into(),
    }
}

fn shown(s: &str) -> String {
    let cut: String = s.chars().take(80).collect();
    if cut.len() < s.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// A peer's service, validated. `peer_td` is the exporting peer's trust domain.
pub fn service_from_wire(
    s: &pb::Service,
    peer_td: &TrustDomain,
    limits: &Limits,
    version: u64,
) -> Result<RemoteService, Nack> {
    let exported_name: Hostname = s.exported_name.parse().map_err(|e| {
        nack(
            version,
            "InvalidHostname",
            format!("exported name {}: {e}", shown(&s.exported_name)),
        )
    })?;
    let key: ServiceKey = format!("{}/{}", s.namespace, s.name).parse().map_err(|e| {
        nack(
            version,
            "InvalidName",
            format!("{}: {e}", shown(&s.exported_name)),
        )
    })?;
    let prefix = format!("{}.{}.svc.", key.name, key.namespace);
    let rest = exported_name.as_str().strip_prefix(&prefix);
    let peer_label = rest.and_then(|r| r.strip_suffix("-exports.local"));
    if !peer_label.is_some_and(|p| !p.is_empty() && !p.contains('.')) {
        return Err(nack(
            version,
            "ExportedNameMismatch",
            format!("{exported_name} is not <name>.<namespace>.svc.<peer>-exports.local for {key}"),
        ));
    }
    if s.ports.len() > limits.max_ports {
        return Err(nack(
            version,
            "TooManyPorts",
            format!("{exported_name}: {} ports", s.ports.len()),
        ));
    }
    let mut ports = Vec::with_capacity(s.ports.len());
    let (mut names, mut numbers) = (BTreeSet::new(), BTreeSet::new());
    for p in &s.ports {
        let number = u16::try_from(p.port)
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| {
                nack(
                    version,
                    "InvalidPort",
                    format!("{exported_name}: port {}", p.port),
                )
            })?;
        meshfed_core::name::dns1123_label("port name", &p.name)
            .map_err(|e| nack(version, "InvalidName", format!("{exported_name}: {e}")))?;
        let protocol: Protocol = p
            .protocol
            .parse()
            .map_err(|e| nack(version, "UnknownProtocol", format!("{exported_name}: {e}")))?;
        if !names.insert(p.name.clone()) || !numbers.insert(number) {
            return Err(nack(
                version,
                "DuplicatePort",
                format!("{exported_name}: port {} / {:?} twice", p.port, p.name),
            ));
        }
        ports.push(ServicePort {
            name: p.name.clone(),
            port: number,
            protocol,
        });
    }
    if s.service_accounts.len() > limits.max_accounts {
        return Err(nack(
            version,
            "TooManyAccounts",
            format!("{exported_name}: {} accounts", s.service_accounts.len()),
        ));
    }
    let mut service_accounts = Vec::with_capacity(s.service_accounts.len());
    for a in &s.service_accounts {
        let id = SpiffeId::parse_workload(a)
            .map_err(|e| nack(version, "InvalidIdentity", format!("{exported_name}: {e}")))?;
        if id.trust_domain() != peer_td {
            return Err(nack(
                version,
                "ForeignIdentity",
                format!("{exported_name}: {id} is not in the peer's trust domain {peer_td}"),
            ));
        }
        service_accounts.push(id);
    }
    Ok(RemoteService {
        exported_name,
        key,
        ports,
        service_accounts,
    })
}

/// A snapshot chunk, validated.
pub fn snapshot_from_wire(
    s: pb::Snapshot,
    peer_td: &TrustDomain,
    limits: &Limits,
) -> Result<SnapshotChunk, Nack> {
    if s.services.len() > limits.max_batch {
        return Err(nack(
            s.version,
            "BatchTooLarge",
            format!("{} services in one chunk", s.services.len()),
        ));
    }
    let services = s
        .services
        .iter()
        .map(|x| service_from_wire(x, peer_td, limits, s.version))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SnapshotChunk {
        epoch: s.epoch,
        version: s.version,
        chunk: s.chunk,
        last: s.last,
        services,
    })
}

/// A delta, validated.
pub fn delta_from_wire(
    d: pb::Delta,
    peer_td: &TrustDomain,
    limits: &Limits,
) -> Result<Delta, Nack> {
    if d.upserts.len() + d.removals.len() > limits.max_batch {
        return Err(nack(
            d.version,
            "BatchTooLarge",
            "too many changes in one delta",
        ));
    }
    let upserts = d
        .upserts
        .iter()
        .map(|x| service_from_wire(x, peer_td, limits, d.version))
        .collect::<Result<Vec<_>, _>>()?;
    let removals = d
        .removals
        .iter()
        .map(|r| {
            r.parse::<Hostname>().map_err(|e| {
                nack(
                    d.version,
                    "InvalidHostname",
                    format!("removal {}: {e}", shown(r)),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Delta {
        epoch: d.epoch,
        base: d.base,
        version: d.version,
        upserts,
        removals,
    })
}

/// A service for the wire.
pub fn service_to_wire(s: &RemoteService) -> pb::Service {
    pb::Service {
        exported_name: s.exported_name.to_string(),
        namespace: s.key.namespace.to_string(),
        name: s.key.name.to_string(),
        ports: s
            .ports
            .iter()
            .map(|p| pb::Port {
                name: p.name.clone(),
                port: u32::from(p.port),
                protocol: p.protocol.to_string(),
            })
            .collect(),
        service_accounts: s.service_accounts.iter().map(ToString::to_string).collect(),
    }
}

pub fn snapshot_to_wire(c: &SnapshotChunk) -> pb::Snapshot {
    pb::Snapshot {
        epoch: c.epoch,
        version: c.version,
        chunk: c.chunk,
        last: c.last,
        services: c.services.iter().map(service_to_wire).collect(),
    }
}

pub fn delta_to_wire(d: &Delta) -> pb::Delta {
    pb::Delta {
        epoch: d.epoch,
        base: d.base,
        version: d.version,
        upserts: d.upserts.iter().map(service_to_wire).collect(),
        removals: d.removals.iter().map(ToString::to_string).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> pb::Service {
        pb::Service {
            exported_name: "orders.shop.svc.beta-mesh-exports.local".into(),
            namespace: "shop".into(),
            name: "orders".into(),
            ports: vec![pb::Port {
                name: "http".into(),
                port: 8080,
                protocol: "HTTP".into(),
            }],
            service_accounts: vec!["spiffe://alpha.local/ns/shop/sa/orders".into()],
        }
    }

    fn reason(edit: impl FnOnce(&mut pb::Service)) -> &'static str {
        let mut s = good();
        edit(&mut s);
        let td: TrustDomain = "alpha.local".parse().unwrap();
        match service_from_wire(&s, &td, &Limits::default(), 1) {
            Ok(_) => "Ok",
            Err(n) => n.reason,
        }
    }

    #[test]
    fn hostile_services_are_refused() {
        assert_eq!(reason(|_| {}), "Ok");
        assert_eq!(
            reason(|s| s.exported_name = "Orders.shop.svc.x-exports.local".into()),
            "InvalidHostname"
        );
        assert_eq!(
            reason(|s| s.exported_name = "a\0b".into()),
            "InvalidHostname"
        );
        assert_eq!(
            reason(|s| s.exported_name = "x".repeat(1 << 20)),
            "InvalidHostname"
        );
        assert_eq!(
            reason(|s| s.exported_name = "orders.shop.svc.cluster.local".into()),
            "ExportedNameMismatch"
        );
        assert_eq!(
            reason(|s| s.exported_name = "other.shop.svc.beta-mesh-exports.local".into()),
            "ExportedNameMismatch"
        );
        assert_eq!(reason(|s| s.namespace = "../etc".into()), "InvalidName");
        assert_eq!(reason(|s| s.name = "Orders".into()), "InvalidName");
        assert_eq!(reason(|s| s.ports[0].port = 0), "InvalidPort");
        assert_eq!(reason(|s| s.ports[0].port = 65536), "InvalidPort");
        assert_eq!(
            reason(|s| s.ports[0].protocol = "QUIC".into()),
            "UnknownProtocol"
        );
        assert_eq!(
            reason(|s| s.ports.push(s.ports[0].clone())),
            "DuplicatePort"
        );
        assert_eq!(
            reason(|s| s.ports = vec![s.ports[0].clone(); 100]),
            "TooManyPorts"
        );
        assert_eq!(
            reason(|s| s.service_accounts = vec!["spiffe://beta.local/ns/x/sa/y".into()]),
            "ForeignIdentity"
        );
        assert_eq!(
            reason(|s| s.service_accounts = vec!["spiffe://alpha.local".into()]),
            "InvalidIdentity"
        );
        assert_eq!(
            reason(|s| s.service_accounts = vec!["not an id".into()]),
            "InvalidIdentity"
        );
    }

    #[test]
    fn round_trip() {
        let td: TrustDomain = "alpha.local".parse().unwrap();
        let s = service_from_wire(&good(), &td, &Limits::default(), 1).unwrap();
        assert_eq!(service_to_wire(&s), good());
    }
}
