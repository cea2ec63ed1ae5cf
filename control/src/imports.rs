//! Imports in the served configuration: the mesh file's snapshot joined with what each peer
//! exports to us (from the peering importers), mapped through our `ImportedServiceSet`s and
//! resolved to routes through our egress gateways, with the peers' health reports. Every
//! change on either side — the file, a peer's exports, a peer's health — is a new version.

use std::sync::{Arc, Mutex, PoisonError};

use meshfed_core::federation::MeshFederation;
use meshfed_core::import::{ImportedRoute, combine, import_mapping, routes_from_plan};
use meshfed_core::stream::ImportState;
use meshfed_core::{Hostname, PeerName};
use meshfed_peering::client::Health;
use tokio::sync::{Notify, watch};

use crate::Snapshot;
use crate::server::ControlStatus;

/// What one peer's importer publishes.
#[derive(Debug, Clone)]
pub struct PeerFeed {
    pub peer: PeerName,
    pub imports: watch::Receiver<Arc<ImportState>>,
    pub health: watch::Receiver<Arc<Health>>,
}

/// The routes `mesh` imports from its peers right now. Imports of a peer for which the mesh
/// declares no egress gateway are left out and returned apart, as (hostname, peer).
pub fn resolve(
    mesh: &MeshFederation,
    feeds: &[PeerFeed],
) -> (Vec<ImportedRoute>, Vec<(Hostname, PeerName)>) {
    let mappings: Vec<_> = feeds
        .iter()
        .filter_map(|f| {
            let set = mesh.peers.get(&f.peer)?.imports.as_ref()?;
            let services: Vec<_> = f.imports.borrow().services().values().cloned().collect();
            Some(import_mapping(set, &services, &mesh.catalog))
        })
        .collect();
    let plan = combine(&mappings, &mesh.catalog);
    let health = |peer: &PeerName, name: &Hostname| {
        feeds
            .iter()
            .find(|f| &f.peer == peer)
            .and_then(|f| f.health.borrow().get(name).copied())
    };
    routes_from_plan(
        &plan,
        |peer| mesh.peers.get(peer).and_then(|p| mesh.egress_address(p)),
        health,
    )
}

/// Serves `source` (the mesh file's snapshots) joined with the peers' imports on `tx`, until
/// `tx` has no receivers. Versions are the served ones: each new content gets the next.
pub async fn serve_with_imports(
    source: watch::Receiver<Arc<Snapshot>>,
    feeds: Vec<PeerFeed>,
    tx: watch::Sender<Arc<Snapshot>>,
    status: Arc<Mutex<ControlStatus>>,
    log: crate::Log,
) {
    let wake = Arc::new(Notify::new());
    let mut forwarders = Vec::new();
    {
        let (mut rx, wake) = (source.clone(), wake.clone());
        forwarders.push(tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                wake.notify_one();
            }
        }));
    }
    for f in &feeds {
        let (mut imports, mut health, wake) = (f.imports.clone(), f.health.clone(), wake.clone());
        forwarders.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = imports.changed() => if r.is_err() { return },
                    r = health.changed() => if r.is_err() { return },
                }
                wake.notify_one();
            }
        }));
    }
    let mut missing_said = Vec::new();
    loop {
        let base = source.borrow().clone();
        let (routes, missing) = resolve(&base.mesh, &feeds);
        if missing != missing_said {
            for (host, peer) in &missing {
                log(&format!(
                    "{host} is imported from {peer}, but the mesh declares no egress gateway for that peer (spec.gateways); it is not served"
                ));
            }
            missing_said = missing;
        }
        let prev = tx.borrow().clone();
        let next = Snapshot {
            version: prev.version + 1,
            mesh: base.mesh.clone(),
            mesh_json: base.mesh_json.clone(),
            bundles: base.bundles.clone(),
            imports: Arc::new(routes),
        };
        if !prev.same_content(&next) {
            log(&format!(
                "serving version {} ({} imported service route(s))",
                next.version,
                next.imports.len()
            ));
            status
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .version = next.version;
            tx.send_replace(Arc::new(next));
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tx.closed() => break,
        }
    }
    for f in forwarders {
        f.abort();
    }
}
