//! Imports in the served configuration: the mesh file's snapshot joined with what each peer
//! exports to us (from the peering importers), mapped through our `ImportedServiceSet`s and
//! resolved to routes through our egress gateways, with the peers' health reports. Every
//! change on either side — the file, a peer's exports, a peer's health — is a new version.

use std::sync::Arc;
use tokio_util::task::AbortOnDropHandle;

use meshfed_core::federation::MeshFederation;
use meshfed_core::import::{ImportedRoute, combine, import_mapping, routes_from_plan};
use meshfed_core::stream::ImportState;
use meshfed_core::{Hostname, PeerName};
use meshfed_peering::client::Health;
use tokio::sync::{Notify, watch};

use crate::Snapshot;
use crate::server::StatusCell;

/// What one peer's importer publishes.
#[derive(Debug, Clone)]
pub struct PeerFeed {
    pub peer: PeerName,
    pub imports: watch::Receiver<Arc<ImportState>>,
    pub health: watch::Receiver<Arc<Health>>,
    /// Its status: a stale peer (silent past its liveness timeout) serves no traffic of ours.
    pub status: watch::Receiver<meshfed_peering::status::PeerStatus>,
}

/// Healthy and total workloads per local service (for what we export).
pub type ServiceHealth = std::collections::BTreeMap<meshfed_core::ServiceKey, (u32, u32)>;

/// Called with the mesh and its services' health whenever either may have changed (the
/// peering exporter's view follows it).
pub type OnMesh = Arc<dyn Fn(&MeshFederation, &ServiceHealth) + Send + Sync>;

/// Each local service's healthy and total workloads, given the unready ones.
pub fn service_health(
    mesh: &MeshFederation,
    unready: &std::collections::BTreeSet<(String, String)>,
) -> ServiceHealth {
    let mut out = ServiceHealth::new();
    for w in mesh.catalog.workloads() {
        let e = out.entry(w.service.clone()).or_insert((0, 0));
        e.1 += 1;
        if !unready.contains(&(w.namespace.to_string(), w.name.clone())) {
            e.0 += 1;
        }
    }
    out
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
        let f = feeds.iter().find(|f| &f.peer == peer)?;
        let reported = f.health.borrow().get(name).copied();
        if f.status.borrow().stale {
            // Not chosen while the peer is silent; its imports are kept for when it is back.
            return Some((0, reported.map_or(1, |(_, total)| total.max(1))));
        }
        reported
    };
    routes_from_plan(
        &plan,
        |peer| mesh.peers.get(peer).and_then(|p| mesh.egress_address(p)),
        health,
    )
}

/// Wakes `wake` on every change of a feed that matters to the served snapshot: its imports,
/// its health, or its staleness (not every heartbeat).
fn feed_forwarders(feeds: &[PeerFeed], wake: &Arc<Notify>) -> Vec<AbortOnDropHandle<()>> {
    feeds
        .iter()
        .map(|f| {
            let (mut imports, mut health, mut st, wake) = (
                f.imports.clone(),
                f.health.clone(),
                f.status.clone(),
                wake.clone(),
            );
            AbortOnDropHandle::new(tokio::spawn(async move {
                let mut stale = st.borrow().stale;
                loop {
                    tokio::select! {
                        r = imports.changed() => if r.is_err() { return },
                        r = health.changed() => if r.is_err() { return },
                        r = st.changed() => {
                            if r.is_err() { return }
                            let now = st.borrow().stale;
                            if now == stale { continue }
                            stale = now;
                        }
                    }
                    wake.notify_one();
                }
            }))
        })
        .collect()
}

/// Serves `source` (the mesh file's snapshots) joined with the peers' imports on `tx`, until
/// `tx` has no receivers. Versions are the served ones: each new content gets the next.
#[allow(clippy::too_many_arguments)]
pub async fn serve_with_imports(
    source: watch::Receiver<Arc<Snapshot>>,
    feeds: watch::Receiver<Vec<PeerFeed>>,
    readiness: watch::Receiver<crate::server::Readiness>,
    on_mesh: Option<OnMesh>,
    tx: watch::Sender<Arc<Snapshot>>,
    status: StatusCell,
) {
    let wake = Arc::new(Notify::new());
    // Stopped when this function ends, or is dropped.
    let mut forwarders = Vec::new();
    {
        let (mut rx, wake) = (source.clone(), wake.clone());
        forwarders.push(AbortOnDropHandle::new(tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                wake.notify_one();
            }
        })));
    }
    {
        let (mut rx, wake) = (readiness.clone(), wake.clone());
        forwarders.push(AbortOnDropHandle::new(tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                wake.notify_one();
            }
        })));
    }
    // One forwarder per peer's feed, rebuilt when the peers change.
    {
        let (mut rx, wake) = (feeds.clone(), wake.clone());
        forwarders.push(AbortOnDropHandle::new(tokio::spawn(async move {
            let mut per = feed_forwarders(&rx.borrow_and_update(), &wake);
            while rx.changed().await.is_ok() {
                per.clear();
                per = feed_forwarders(&rx.borrow_and_update(), &wake);
                wake.notify_one();
            }
        })));
    }
    let mut missing_said = Vec::new();
    loop {
        let base = source.borrow().clone();
        let unready: std::collections::BTreeSet<(String, String)> = readiness
            .borrow()
            .iter()
            .filter(|(_, ready)| !**ready)
            .map(|(k, _)| k.clone())
            .collect();
        if let Some(f) = &on_mesh {
            f(&base.mesh, &service_health(&base.mesh, &unready));
        }
        let current_feeds = feeds.borrow().clone();
        let (routes, missing) = resolve(&base.mesh, &current_feeds);
        if missing != missing_said {
            for (host, peer) in &missing {
                tracing::info!(
                    "{host} is imported from {peer}, but the mesh declares no egress gateway for that peer (spec.gateways); it is not served"
                );
            }
            missing_said = missing;
        }
        let prev = tx.borrow().clone();
        let next = Snapshot {
            version: prev.version + 1,
            mesh: base.mesh.clone(),
            mesh_json: base.mesh_json.clone(),
            bundles: base.bundles.clone(),
            signing_root: base.signing_root.clone(),
            imports: Arc::new(routes),
            unready: Arc::new(unready),
        };
        if !prev.same_content(&next) {
            tracing::info!(
                "serving version {} ({} imported service route(s))",
                next.version,
                next.imports.len()
            );
            status.update(|st| st.version = next.version);
            tx.send_replace(Arc::new(next));
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tx.closed() => break,
        }
    }
    drop(forwarders);
}
