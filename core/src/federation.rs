//! A mesh's federation configuration as one value, and `explain`: what it exports to each peer,
//! what it imports from each peer, which imports merge with local services, and every conflict.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::catalog::Catalog;
use crate::export::{ExportRule, ExportScope, ExportView, export_view_for};
use crate::id::{Hostname, MeshName, Namespace, PeerName, SpiffeId, TrustDomain};
use crate::import::{
    ImportConflict, ImportMapping, ImportPlan, ImportSet, RemoteService, combine, import_mapping,
};

/// One `ServiceMeshPeer` with the service sets that carry its name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    pub name: PeerName,
    pub trust_domain: TrustDomain,
    /// The peer egress gateway's identity, allowed to connect to us.
    pub client_id: SpiffeId,
    pub addresses: Vec<String>,
    pub discovery_port: u16,
    pub service_port: u16,
    /// Our egress gateway towards this peer (`spec.gateways.egress.name`, default
    /// `egress-<peer>`); its service account `<name>-service-account` is the identity we
    /// present to the peer, which the peer lists as its `clientID` for us.
    pub egress_gateway: String,
    /// Our ingress gateway for this peer (`spec.gateways.ingress.name`, default
    /// `ingress-<peer>`); the peer's egress expects its service account's identity.
    pub ingress_gateway: String,
    /// Rules of the `ExportedServiceSet` named after this peer (empty: nothing exported).
    pub exports: Vec<ExportRule>,
    /// The `ImportedServiceSet` named after this peer, if any.
    pub imports: Option<ImportSet>,
}

/// One mesh: its identity, its services and its peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshFederation {
    pub mesh: MeshName,
    pub trust_domain: TrustDomain,
    /// The control-plane namespace, where the federation resources live.
    pub namespace: Namespace,
    pub catalog: Catalog,
    pub peers: BTreeMap<PeerName, Peer>,
    /// Authorization policies, with the workloads they apply to.
    pub policies: Vec<crate::authz::ScopedPolicy>,
    /// Callers' traffic policy per service; services absent here get the default.
    pub traffic: BTreeMap<crate::id::ServiceKey, crate::traffic::TrafficPolicy>,
    /// Where the mesh's federation gateways listen, by gateway name.
    pub gateways: BTreeMap<String, GatewayAddress>,
}

/// Where one federation gateway listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayAddress {
    pub address: std::net::SocketAddr,
    /// An ingress's discovery listener.
    pub discovery: Option<std::net::SocketAddr>,
}

impl MeshFederation {
    /// The policies that apply to workloads of `service`.
    pub fn policies_for(&self, service: &crate::id::ServiceKey) -> Vec<crate::authz::Policy> {
        self.policies
            .iter()
            .filter(|p| p.applies_to(service))
            .map(|p| p.policy.clone())
            .collect()
    }

    /// The traffic policy for calls to `service`.
    pub fn traffic_for(&self, service: &crate::id::ServiceKey) -> crate::traffic::TrafficPolicy {
        self.traffic.get(service).cloned().unwrap_or_default()
    }

    /// What `peer` may see of this mesh.
    pub fn export_view(&self, peer: &Peer) -> ExportView {
        let scope = ExportScope {
            peer: &peer.name,
            control_plane_namespace: Some(&self.namespace),
        };
        export_view_for(scope, &peer.exports, &self.catalog)
    }

    /// This mesh's `ServiceMeshPeer` for the mesh with trust domain `td`.
    pub fn peer_for(&self, td: &TrustDomain) -> Option<&Peer> {
        self.peers.values().find(|p| &p.trust_domain == td)
    }

    /// The services this mesh exports to the mesh `importer`, as they arrive there.
    pub fn exports_to(&self, importer: &MeshFederation) -> Option<Vec<RemoteService>> {
        Some(self.remote_services_for(self.peer_for(&importer.trust_domain)?))
    }

    /// What `peer` receives over peering: its export view, with the serving identities.
    pub fn remote_services_for(&self, peer: &Peer) -> Vec<RemoteService> {
        self.export_view(peer)
            .services
            .into_values()
            .map(|s| {
                let accounts = self
                    .catalog
                    .get(&s.local)
                    .map(|svc| {
                        svc.service_accounts
                            .iter()
                            .filter_map(|sa| {
                                SpiffeId::for_service_account(
                                    &self.trust_domain,
                                    &s.local.namespace,
                                    sa,
                                )
                                .ok()
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                RemoteService {
                    exported_name: s.exported_name,
                    key: s.exported_as,
                    ports: s.ports,
                    service_accounts: accounts,
                }
            })
            .collect()
    }

    /// What `peer` may reach through our ingress: each name exported to it, with the local
    /// service's workload inbound addresses.
    pub fn ingress_exports(&self, peer: &Peer) -> BTreeMap<Hostname, Vec<std::net::SocketAddr>> {
        self.export_view(peer)
            .services
            .into_values()
            .map(|s| {
                let endpoints = self
                    .catalog
                    .endpoints_of(&s.local)
                    .map(|w| w.inbound)
                    .collect();
                (s.exported_name, endpoints)
            })
            .collect()
    }

    /// Every peer `service` is exported to (its trust domain) with the name it is exported
    /// under there.
    pub fn exports_of(&self, service: &crate::id::ServiceKey) -> Vec<(TrustDomain, Hostname)> {
        self.peers
            .values()
            .flat_map(|peer| {
                self.export_view(peer)
                    .services
                    .into_values()
                    .filter(|s| &s.local == service)
                    .map(|s| (peer.trust_domain.clone(), s.exported_name))
            })
            .collect()
    }

    /// The names peers reach `service` by: its exported names, across peers.
    pub fn exported_names_of(&self, service: &crate::id::ServiceKey) -> Vec<Hostname> {
        let mut names: Vec<Hostname> = self
            .exports_of(service)
            .into_iter()
            .map(|(_, name)| name)
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The trust domains of the peers `service` is exported to: the only other meshes whose
    /// workloads may call it.
    pub fn domains_exported_to(
        &self,
        service: &crate::id::ServiceKey,
    ) -> std::collections::BTreeSet<TrustDomain> {
        self.exports_of(service)
            .into_iter()
            .map(|(td, _)| td)
            .collect()
    }

    /// Where our egress gateway towards `peer` listens, if the mesh declares it.
    pub fn egress_address(&self, peer: &Peer) -> Option<std::net::SocketAddr> {
        self.gateways.get(&peer.egress_gateway).map(|g| g.address)
    }

    /// Where our ingress gateway for `peer` listens, if the mesh declares it.
    pub fn ingress_address(&self, peer: &Peer) -> Option<GatewayAddress> {
        self.gateways.get(&peer.ingress_gateway).copied()
    }

    /// The identity our ingress gateway for `peer` presents to the peer's egress.
    pub fn ingress_identity(&self, peer: &Peer) -> Result<SpiffeId, crate::id::SpiffeIdError> {
        SpiffeId::for_service_account(
            &self.trust_domain,
            &self.namespace,
            &format!("{}-service-account", peer.ingress_gateway),
        )
    }

    /// The identity this mesh presents to `peer` (its egress gateway's service account).
    pub fn egress_identity(&self, peer: &Peer) -> Result<SpiffeId, crate::id::SpiffeIdError> {
        SpiffeId::for_service_account(
            &self.trust_domain,
            &self.namespace,
            &format!("{}-service-account", peer.egress_gateway),
        )
    }
}

/// Where the import side of a peer stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state")]
pub enum ImportSide {
    /// No `ImportedServiceSet` carries this peer's name: nothing is imported.
    NoImportedServiceSet,
    /// The peer's configuration was not given, so its exports are unknown.
    PeerExportsUnknown,
    /// The peer's mesh has no `ServiceMeshPeer` for us, so it exports nothing to us.
    PeerDoesNotPeerBack,
    Mapped(ImportMapping),
}

/// Explanation of one peer relationship.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerExplanation {
    pub peer: PeerName,
    pub trust_domain: TrustDomain,
    pub client_id: SpiffeId,
    /// The peer's mesh, when its configuration was given.
    pub remote_mesh: Option<MeshName>,
    pub exports: ExportView,
    pub imports: ImportSide,
    /// Our exports to the peer that its import rules do not match (`ExportNotImported`).
    pub exports_not_imported: Vec<Hostname>,
}

/// Explanation of one mesh's federation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub mesh: MeshName,
    pub trust_domain: TrustDomain,
    pub namespace: Namespace,
    pub peers: Vec<PeerExplanation>,
    /// Imports across all peers, with `importAsLocal` merges.
    pub imports: ImportPlan,
}

impl Explanation {
    /// Every conflict in the explanation, as (reason, description) pairs.
    pub fn conflict_count(&self) -> usize {
        self.imports.conflicts.len()
            + self
                .peers
                .iter()
                .map(|p| p.exports.conflicts.len())
                .sum::<usize>()
    }

    pub fn import_conflicts(&self) -> &[ImportConflict] {
        &self.imports.conflicts
    }
}

/// Explains `local`, using `others` (other meshes' configurations) for the import side.
/// `only` restricts the per-peer sections to one peer; merges still account for every peer.
pub fn explain(
    local: &MeshFederation,
    others: &[MeshFederation],
    only: Option<&PeerName>,
) -> Explanation {
    let mut peers = Vec::new();
    let mut mappings = Vec::new();
    for peer in local.peers.values() {
        let remote = others.iter().find(|m| m.trust_domain == peer.trust_domain);
        let exports = local.export_view(peer);
        let imports = match (&peer.imports, remote) {
            (None, _) => ImportSide::NoImportedServiceSet,
            (Some(_), None) => ImportSide::PeerExportsUnknown,
            (Some(set), Some(remote)) => match remote.exports_to(local) {
                None => ImportSide::PeerDoesNotPeerBack,
                Some(services) => {
                    let mapping = import_mapping(set, &services, &local.catalog);
                    mappings.push(mapping.clone());
                    ImportSide::Mapped(mapping)
                }
            },
        };
        let exports_not_imported = remote
            .and_then(|r| {
                let back = r.peer_for(&local.trust_domain)?;
                let Some(set) = &back.imports else {
                    return Some(exports.services.keys().cloned().collect());
                };
                let sent = local.exports_to(r)?;
                Some(import_mapping(set, &sent, &r.catalog).unmatched)
            })
            .unwrap_or_default();
        if only.is_none_or(|o| o == &peer.name) {
            peers.push(PeerExplanation {
                peer: peer.name.clone(),
                trust_domain: peer.trust_domain.clone(),
                client_id: peer.client_id.clone(),
                remote_mesh: remote.map(|r| r.mesh.clone()),
                exports,
                imports,
                exports_not_imported,
            });
        }
    }
    Explanation {
        mesh: local.mesh.clone(),
        trust_domain: local.trust_domain.clone(),
        namespace: local.namespace.clone(),
        peers,
        imports: combine(&mappings, &local.catalog),
    }
}
