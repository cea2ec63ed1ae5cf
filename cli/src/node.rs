//! `meshfed peering run`: the peering part of a mesh's control plane, for one mesh file — the
//! exporter serving each peer its export view, an importer per peer, the store, and a loopback
//! admin endpoint with status. `meshfed status` reads that endpoint.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Args;
use meshfed_core::federation::MeshFederation;
use meshfed_core::session::SessionConfig;
use meshfed_core::stream::Limits;
use meshfed_core::{Hostname, SpiffeId, TrustDomain};
use meshfed_crds::validate;
use meshfed_peering::client::{self, ImporterConfig};
use meshfed_peering::server::{
    ExportPeer, Exporter, ExporterConfig, ExporterEvent, ExporterOptions,
};
use meshfed_peering::status::{PeerStatus, unix_ms};
use meshfed_peering::{admin, tls};
use meshfed_trust::ca::{CertificateAuthority, DEFAULT_SVID_TTL};
use meshfed_trust::store::{DirStore, TrustStore};
use meshfed_trust::verify::{
    self, Expect, SpiffeClientVerifier, SpiffeServerVerifier, SvidResolver,
};
use serde::Serialize;
use tokio::sync::watch;

use crate::trust::{DirArg, parse_duration};
use crate::{emit, note};

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The mesh file (a Mesh document and its federation resources).
    #[arg(long)]
    mesh: PathBuf,
    #[command(flatten)]
    dir: DirArg,
    /// Where peers reach our peering endpoint (in production, behind the ingress gateway's
    /// discovery port).
    #[arg(long, default_value = "127.0.0.1:8188")]
    listen: SocketAddr,
    /// Loopback address of the admin endpoint (status, health).
    #[arg(long, default_value = "127.0.0.1:15020")]
    admin: SocketAddr,
    /// Directory of the persisted imports (a rebuildable cache).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Heartbeat interval.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// Silence after which a peer is Failing.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    liveness: Duration,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Admin address of a running `meshfed peering run`.
    #[arg(long, default_value = "127.0.0.1:15020")]
    admin: SocketAddr,
    #[arg(long, short, value_enum, default_value_t = crate::OutputFormat::Table)]
    output: crate::OutputFormat,
}

/// The exporter side as status shows it.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct ExportSide {
    connected: bool,
    last_acked_version: Option<u64>,
    last_close_reason: Option<String>,
    last_nack_reason: Option<String>,
    exported_services: usize,
    /// What is exported to the peer (`ExportedServiceSet.status.exportedServices`).
    services: Vec<ListedService>,
}

/// A service as the service sets' status lists it: the exported name and the local service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
struct ListedService {
    exported_name: String,
    /// Empty for an export of the peer that no import rule matched (as Maistra lists it).
    local_service: LocalService,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
struct LocalService {
    name: String,
    namespace: String,
    hostname: String,
}

impl ListedService {
    fn new(exported: &Hostname, local: Option<(&meshfed_core::ServiceKey, &Hostname)>) -> Self {
        Self {
            exported_name: exported.to_string(),
            local_service: local.map_or_else(LocalService::default, |(key, host)| LocalService {
                name: key.name.to_string(),
                namespace: key.namespace.to_string(),
                hostname: host.to_string(),
            }),
        }
    }
}

/// The importer side as status shows it: the importer's status and what its exports became
/// here (`ImportedServiceSet.status.importedServices`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct ImportSide {
    #[serde(flatten)]
    status: PeerStatus,
    services: Vec<ListedService>,
}

/// Exporter-side status for every peer, and recent refusals (identity or address, reason).
#[derive(Debug, Default)]
struct ExportSides {
    peers: BTreeMap<String, ExportSide>,
    refused: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeStatus {
    mesh: String,
    trust_domain: String,
    listen: String,
    imports: Vec<ImportSide>,
    exports: BTreeMap<String, ExportSide>,
    /// Recent refused connections (identity, reason).
    refused: Vec<(String, String)>,
}

pub(crate) fn load_mesh(path: &std::path::Path) -> Result<MeshFederation> {
    Ok(load_mesh_file(path)?.mesh)
}

/// Loads the one mesh of `path`, printing its warnings; any error refuses the whole file.
pub(crate) fn load_mesh_file(path: &std::path::Path) -> Result<validate::LoadedMesh> {
    let (_, text) = crate::read_text(path)?;
    let loaded = validate::load_mesh(&path.display().to_string(), &text)?;
    for d in &loaded.warnings {
        note(&d.to_string());
    }
    Ok(loaded)
}

/// The mesh CA in `dir`, which must be `mesh`'s, and every trust bundle held there.
pub(crate) fn load_ca_for(
    dir: &std::path::Path,
    mesh: &MeshFederation,
) -> Result<(CertificateAuthority, meshfed_trust::TrustBundleSet)> {
    let ca = CertificateAuthority::load(dir)
        .with_context(|| format!("loading the CA in {}", dir.display()))?;
    if ca.trust_domain() != &mesh.trust_domain {
        bail!(
            "the CA in {} is for {}, the mesh is {}",
            dir.display(),
            ca.trust_domain(),
            mesh.trust_domain
        );
    }
    let held = meshfed_trust::dir::load_bundles(dir, &ca)?;
    Ok((ca, held))
}

/// `HOST:PORT` (a name or an address) as a socket address.
pub(crate) async fn resolve_host_port(s: &str) -> Result<SocketAddr> {
    tokio::net::lookup_host(s)
        .await
        .with_context(|| format!("resolving {s} (HOST:PORT)"))?
        .next()
        .with_context(|| format!("{s} has no address"))
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))
}

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: RunArgs) -> Result<ExitCode> {
    let mesh = load_mesh(&args.mesh)?;
    let (ca, held) = load_ca_for(&args.dir.dir, &mesh)?;
    warn_missing_bundles(&mesh, &held);
    let ca = Arc::new(ca);
    let node = start_node(
        &mesh,
        Arc::new(move |id: &SpiffeId| Ok(ca.issue(id, DEFAULT_SVID_TTL, SystemTime::now())?)),
        verify::shared(held),
        NodeOptions {
            listen: args.listen,
            store: args.store.clone(),
            heartbeat: args.heartbeat,
            liveness: args.liveness,
            trust_store: Arc::new(DirStore::new(&args.dir.dir, mesh.trust_domain.clone())),
        },
    )
    .await?;
    let (admin_addr, _admin) = admin::serve(args.admin, node.status.clone()).await?;
    note(&format!(
        "meshfed peering for mesh {} ({}): peering on {}, admin on http://{admin_addr}/status",
        mesh.mesh, mesh.trust_domain, node.listen
    ));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    note("stopping");
    node.stop().await;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn warn_missing_bundles(
    mesh: &MeshFederation,
    held: &meshfed_trust::bundle::TrustBundleSet,
) {
    for p in mesh.peers.values() {
        if held.get(&p.trust_domain).is_none() {
            note(&format!(
                "warning: no bundle for peer {} ({}); import one with `meshfed trust bundle import` or a peering token",
                p.name, p.trust_domain
            ));
        }
    }
}

/// How a peering node runs.
#[derive(Debug, Clone)]
pub(crate) struct NodeOptions {
    pub listen: SocketAddr,
    pub store: Option<PathBuf>,
    pub heartbeat: Duration,
    pub liveness: Duration,
    /// Where peer bundles and token records are kept (the CA folder, or the cluster).
    pub trust_store: Arc<dyn TrustStore>,
}

/// A running peering node: the exporter and an importer per peer. The peers follow the mesh
/// ([`Node::sync_peers`]): a new ServiceMeshPeer starts importing, a removed one stops.
pub(crate) struct Node {
    pub listen: SocketAddr,
    /// Status as JSON (the admin endpoint's `/status`).
    pub status: Arc<dyn Fn() -> String + Send + Sync>,
    feeds: watch::Sender<Vec<meshfed_control::imports::PeerFeed>>,
    peers: Arc<Mutex<BTreeMap<String, PeerRun>>>,
    statuses: Statuses,
    exports: watch::Sender<Arc<ExporterConfig>>,
    /// What each peer is exported, for status.
    export_lists: ExportLists,
    /// The exporter's own identity.
    server: (SpiffeId, Arc<SvidResolver>),
    spawner: Spawner,
    /// One peer sync at a time.
    syncing: tokio::sync::Mutex<()>,
}

/// Each importing peer's status, for `/status`.
type Statuses = Arc<Mutex<BTreeMap<String, watch::Receiver<meshfed_peering::status::PeerStatus>>>>;

/// Issues an SVID for one of the node's identities, from the mesh CA as it signs now.
pub(crate) type Issuer = Arc<dyn Fn(&SpiffeId) -> Result<meshfed_trust::Svid> + Send + Sync>;

/// What starting an importer takes.
struct Spawner {
    mesh: String,
    trust_domain: TrustDomain,
    bundles: verify::SharedBundles,
    heartbeat: Duration,
    liveness: Duration,
    trust_store: Arc<dyn TrustStore>,
    store: Option<Arc<meshfed_store::Store>>,
    issue: Issuer,
    mapping: Mapping,
}

/// A peer the node imports from.
struct PeerRun {
    importer: client::Importer,
    feed: meshfed_control::imports::PeerFeed,
    identity: (SpiffeId, Arc<SvidResolver>),
    /// What it was started from; a change restarts it.
    started_from: String,
}

/// What an importer is started from (its exports and the rest of the peer do not matter).
fn started_from(mesh: &MeshFederation, p: &meshfed_core::federation::Peer) -> String {
    format!(
        "{:?}|{}|{}|{:?}|{:?}",
        p.addresses,
        p.discovery_port,
        p.trust_domain,
        mesh.egress_identity(p).ok(),
        p.imports
    )
}

impl Spawner {
    /// Starts importing from `p`; `None` (said) when its address does not resolve.
    async fn spawn(
        &self,
        mesh: &MeshFederation,
        p: &meshfed_core::federation::Peer,
    ) -> Result<Option<PeerRun>> {
        let Some(host) = p.addresses.first() else {
            return Ok(None);
        };
        let address = match resolve(host, p.discovery_port).await {
            Ok(a) => a,
            Err(e) => {
                note(&format!("peer {}: {e:#}", p.name));
                return Ok(None);
            }
        };
        let provider = verify::provider();
        let id = mesh.egress_identity(p)?;
        let svid = (self.issue)(&id)?;
        let resolver = Arc::new(SvidResolver::new(&svid, provider.clone())?);
        let tls = Arc::new(verify::client_config(
            resolver.clone(),
            Arc::new(SpiffeServerVerifier::new(
                self.bundles.clone(),
                Expect::domain(p.trust_domain.clone()),
                provider.clone(),
            )),
            provider,
        )?);
        let importer = client::spawn(
            ImporterConfig {
                mesh: self.mesh.clone(),
                trust_domain: self.trust_domain.clone(),
                peer: p.name.clone(),
                peer_trust_domain: p.trust_domain.clone(),
                address,
                session: SessionConfig {
                    heartbeat_interval: self.heartbeat,
                    liveness_timeout: self.liveness,
                    ..SessionConfig::default()
                },
                limits: Limits::default(),
                connect_timeout: Duration::from_secs(5),
                bundles: Some(self.bundles.clone()),
                trust_store: Some(self.trust_store.clone()),
            },
            tls,
            self.store.clone(),
        );
        let feed = meshfed_control::imports::PeerFeed {
            peer: p.name.clone(),
            imports: importer.imports.clone(),
            health: importer.health.clone(),
            status: importer.status.clone(),
        };
        if let Some(set) = &p.imports {
            watch_mapping(
                set.clone(),
                mesh.catalog.clone(),
                importer.imports.clone(),
                self.mapping.clone(),
            );
        }
        Ok(Some(PeerRun {
            importer,
            feed,
            identity: (id, resolver),
            started_from: started_from(mesh, p),
        }))
    }
}

impl Node {
    /// Serves what a changed `mesh` exports, with each exported service's healthy and total
    /// workloads (the peers themselves follow through [`Node::sync_peers`]).
    pub fn set_exports(
        &self,
        mesh: &MeshFederation,
        health: &meshfed_control::imports::ServiceHealth,
    ) {
        let peers = export_peers(mesh, health);
        self.export_lists.send_if_modified(|l| {
            let next = export_lists(mesh);
            let changed = *l != next;
            *l = next;
            changed
        });
        self.exports.send_if_modified(|c| {
            if c.peers == peers {
                return false;
            }
            let mut next = (**c).clone();
            next.peers = peers;
            *c = Arc::new(next);
            true
        });
    }

    /// Sends peers our bundle as it is now (after a root rotation or retirement).
    pub fn set_bundle(&self, bundle: meshfed_trust::TrustBundle) {
        self.exports.send_if_modified(|c| {
            if c.bundle
                .as_ref()
                .is_some_and(|b| b.sequence == bundle.sequence && b.roots() == bundle.roots())
            {
                return false;
            }
            let mut next = (**c).clone();
            next.bundle = Some(bundle);
            *c = Arc::new(next);
            true
        });
    }

    /// Reissues the node's certificates from `ca` (after its signing root changed).
    pub fn reissue(&self, ca: &CertificateAuthority) -> Result<()> {
        reissue_all(&self.server, &self.peers, &|id| {
            Ok(ca.issue(id, DEFAULT_SVID_TTL, SystemTime::now())?)
        })
    }

    /// The peers' import feeds, as the peers change.
    pub fn feeds(&self) -> watch::Receiver<Vec<meshfed_control::imports::PeerFeed>> {
        self.feeds.subscribe()
    }

    /// Publishes the running peers' feeds and statuses.
    fn publish(&self) {
        let peers = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *self
            .statuses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = peers
            .iter()
            .map(|(n, r)| (n.clone(), r.importer.status.clone()))
            .collect();
        let feeds: Vec<_> = peers.values().map(|r| r.feed.clone()).collect();
        drop(peers);
        self.feeds.send_replace(feeds);
    }

    /// Makes the importers follow `mesh`'s ServiceMeshPeers: a new peer starts importing, a
    /// removed one stops and its persisted state goes, a changed one restarts.
    pub async fn sync_peers(&self, mesh: &MeshFederation) -> Result<()> {
        let _one = self.syncing.lock().await;
        let wanted: BTreeMap<String, String> = mesh
            .peers
            .values()
            .map(|p| (p.name.to_string(), started_from(mesh, p)))
            .collect();
        let stale: Vec<(String, PeerRun)> = {
            let mut peers = self
                .peers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let names: Vec<String> = peers
                .iter()
                .filter(|(n, r)| wanted.get(*n) != Some(&r.started_from))
                .map(|(n, _)| n.clone())
                .collect();
            names
                .into_iter()
                .filter_map(|n| peers.remove(&n).map(|r| (n, r)))
                .collect()
        };
        let mut changed = !stale.is_empty();
        for (name, run) in stale {
            run.importer.stop().await;
            if !wanted.contains_key(&name) {
                note(&format!("peer {name} removed: no longer importing from it"));
                self.clean(&name)?;
            }
        }
        for p in mesh.peers.values() {
            let running = self
                .peers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains_key(p.name.as_str());
            if running {
                continue;
            }
            if let Some(run) = self.spawner.spawn(mesh, p).await? {
                note(&format!("importing from peer {}", p.name));
                self.peers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(p.name.to_string(), run);
                changed = true;
            }
        }
        if changed {
            self.publish();
        }
        Ok(())
    }

    /// Removes a peer's persisted imports. Its trust bundle stays: it may have been imported
    /// by hand, and trust is the operator's to withdraw (`meshfed trust`).
    fn clean(&self, peer: &str) -> Result<()> {
        if let Some(store) = &self.spawner.store {
            store.remove_peer(&peer.parse()?)?;
        }
        Ok(())
    }

    /// Forgets a deleted peer: stops importing from it and removes its persisted imports.
    pub async fn forget_peer(&self, peer: &str) -> Result<()> {
        let run = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(peer);
        if let Some(run) = run {
            run.importer.stop().await;
            self.clean(peer)?;
            self.publish();
        }
        Ok(())
    }

    pub async fn stop(&self) {
        let peers = std::mem::take(
            &mut *self
                .peers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for (_, run) in peers {
            run.importer.stop().await;
        }
    }
}

/// Starts the peering of `mesh`: serves each peer its export view on `opts.listen` and imports
/// from every peer.
pub(crate) async fn start_node(
    mesh: &MeshFederation,
    issue: Issuer,
    bundles: verify::SharedBundles,
    opts: NodeOptions,
) -> Result<Node> {
    let args = &opts;
    let provider = verify::provider();
    let now = SystemTime::now();
    // The exporter: serves each peer its view. Any domain we hold a bundle for may complete
    // the handshake (peers come and go); the stream then admits only a configured peer's
    // exact clientID.
    let server_id =
        SpiffeId::for_service_account(&mesh.trust_domain, &mesh.namespace, "meshfed-peering")?;
    let server_svid = issue(&server_id)?;
    let server_resolver = Arc::new(SvidResolver::new(&server_svid, provider.clone())?);
    let server_tls = Arc::new(verify::server_config(
        server_resolver.clone(),
        // Anonymous clients may connect only to redeem a peering token; the stream needs mTLS.
        Arc::new(
            SpiffeClientVerifier::new(bundles.clone(), Expect::AnyKnownDomain, provider.clone())
                .allow_anonymous(),
        ),
        provider.clone(),
    )?);
    // Health arrives with the sidecars' readiness; nothing is claimed until then.
    let exports = export_peers(mesh, &meshfed_control::imports::ServiceHealth::new());
    let export_lists: ExportLists = Arc::new(watch::channel(export_lists(mesh)).0);
    let (exports_tx, config_rx) = watch::channel(Arc::new(ExporterConfig {
        mesh: mesh.mesh.to_string(),
        trust_domain: mesh.trust_domain.clone(),
        peers: exports,
        bundle: bundles.load().get(&mesh.trust_domain).cloned(),
    }));
    let options = ExporterOptions {
        heartbeat: args.heartbeat,
        liveness: args.liveness * 2,
        ..ExporterOptions::default()
    };
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    let epoch = unix_ms(now) ^ u64::from(std::process::id()).rotate_left(40);
    let exporter = Exporter::new(config_rx, options, epoch, events_tx)
        .with_redeemer(redeemer(args.trust_store.clone(), bundles.clone()));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let bound = listener.local_addr()?;
    let (fail_tx, mut fail_rx) = tokio::sync::mpsc::unbounded_channel();
    let incoming = tls::incoming(listener, server_tls, fail_tx);
    tokio::spawn(async move {
        if let Err(e) = exporter.serve(incoming, std::future::pending()).await {
            note(&format!("peering server stopped: {e}"));
        }
    });
    // Exporter-side status from its events.
    let export_side = Arc::new(Mutex::new(ExportSides {
        peers: export_lists
            .borrow()
            .keys()
            .map(|k| (k.clone(), ExportSide::default()))
            .collect(),
        refused: Vec::new(),
    }));
    {
        let side = export_side.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(ev) = events_rx.recv() => {
                        let Ok(mut s) = side.lock() else { return };
                        match ev {
                            ExporterEvent::Connected { peer } => s.peers.entry(peer.to_string()).or_default().connected = true,
                            ExporterEvent::Closed { peer, reason } => {
                                let e = s.peers.entry(peer.to_string()).or_default();
                                e.connected = false;
                                e.last_close_reason = Some(reason);
                            }
                            ExporterEvent::Acked { peer, version } => s.peers.entry(peer.to_string()).or_default().last_acked_version = Some(version),
                            ExporterEvent::Nacked { peer, reason, .. } => s.peers.entry(peer.to_string()).or_default().last_nack_reason = Some(reason),
                            ExporterEvent::Refused { id, reason } => {
                                s.refused.push((id, reason.to_owned()));
                                if s.refused.len() > 20 { s.refused.remove(0); }
                            }
                        }
                    }
                    Some(f) = fail_rx.recv() => {
                        let Ok(mut s) = side.lock() else { return };
                        s.refused.push((f.remote.to_string(), f.reason));
                        if s.refused.len() > 20 { s.refused.remove(0); }
                    }
                    else => return,
                }
            }
        });
    }
    // The store and an importer per peer.
    let store = match &args.store {
        None => None,
        Some(path) => {
            let (store, rebuilt) = meshfed_store::Store::open(path)?;
            if let Some(r) = rebuilt {
                note(&format!(
                    "store {} rebuilt ({}): {}; the old files are in {}",
                    path.display(),
                    r.reason,
                    r.detail,
                    r.moved_to.display()
                ));
            }
            Some(Arc::new(store))
        }
    };
    let mapping: Mapping = Arc::default();
    let statuses: Statuses = Arc::default();
    let (mesh_name, td, listen) = (
        mesh.mesh.to_string(),
        mesh.trust_domain.to_string(),
        bound.to_string(),
    );
    let status_fn: Arc<dyn Fn() -> String + Send + Sync> = {
        let (statuses, mapping, lists) = (statuses.clone(), mapping.clone(), export_lists.clone());
        Arc::new(move || {
            let (mut exports, refused) = export_side
                .lock()
                .map(|s| (s.peers.clone(), s.refused.clone()))
                .unwrap_or_default();
            for (peer, listed) in lists.borrow().iter() {
                let side = exports.entry(peer.clone()).or_default();
                side.exported_services = listed.len();
                side.services.clone_from(listed);
            }
            let st = NodeStatus {
                mesh: mesh_name.clone(),
                trust_domain: td.clone(),
                listen: listen.clone(),
                imports: statuses
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .values()
                    .map(|s| {
                        let mut status = s.borrow().clone();
                        let mut services = Vec::new();
                        if let Ok(m) = mapping.lock()
                            && let Some((extra, listed)) = m.get(&status.peer)
                        {
                            status.conditions.extend(extra.iter().cloned());
                            services.clone_from(listed);
                        }
                        ImportSide { status, services }
                    })
                    .collect(),
                exports,
                refused,
            };
            serde_json::to_string_pretty(&st).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        })
    };
    let node = Node {
        listen: bound,
        status: status_fn,
        feeds: watch::channel(Vec::new()).0,
        peers: Arc::default(),
        statuses,
        exports: exports_tx,
        export_lists,
        server: (server_id, server_resolver),
        spawner: Spawner {
            mesh: mesh.mesh.to_string(),
            trust_domain: mesh.trust_domain.clone(),
            bundles,
            heartbeat: args.heartbeat,
            liveness: args.liveness,
            trust_store: args.trust_store.clone(),
            store,
            issue,
            mapping,
        },
        syncing: tokio::sync::Mutex::default(),
    };
    node.sync_peers(mesh).await?;
    // Renew the node's SVIDs at half life.
    {
        let (peers, server, issue) = (
            node.peers.clone(),
            node.server.clone(),
            node.spawner.issue.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(DEFAULT_SVID_TTL / 2).await;
                let _ = reissue_all(&server, &peers, &|id| issue(id));
            }
        });
    }
    Ok(node)
}

/// Issues the exporter's identity and every importing peer's a new SVID.
fn reissue_all(
    server: &(SpiffeId, Arc<SvidResolver>),
    peers: &Mutex<BTreeMap<String, PeerRun>>,
    issue: &dyn Fn(&SpiffeId) -> Result<meshfed_trust::Svid>,
) -> Result<()> {
    let mut all = vec![server.clone()];
    all.extend(
        peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(|r| r.identity.clone()),
    );
    for (id, r) in all {
        r.set(&issue(&id)?)?;
    }
    Ok(())
}

/// What `mesh` exports to each of its peers, with each exported service's healthy and total
/// workloads where `health` knows them.
fn export_peers(
    mesh: &MeshFederation,
    health: &meshfed_control::imports::ServiceHealth,
) -> Vec<ExportPeer> {
    mesh.peers
        .values()
        .map(|p| ExportPeer {
            name: p.name.clone(),
            client_id: p.client_id.clone(),
            view: mesh
                .remote_services_for(p)
                .into_iter()
                .map(|s| (s.exported_name.clone(), s))
                .collect::<BTreeMap<Hostname, _>>(),
            health: mesh
                .export_view(p)
                .services
                .into_values()
                .filter_map(|s| Some((s.exported_name, *health.get(&s.local)?)))
                .collect(),
        })
        .collect()
}

/// Per peer, the conditions that come from applying our import rules to its exports, and
/// every export of the peer with the local service it became (none where no rule matched).
type Mapping =
    Arc<Mutex<BTreeMap<String, (Vec<meshfed_peering::status::Condition>, Vec<ListedService>)>>>;

/// Per peer, what it is exported (watched by the status).
type ExportLists = Arc<watch::Sender<BTreeMap<String, Vec<ListedService>>>>;

/// Per peer, each exported service with its local service, by exported name.
fn export_lists(mesh: &MeshFederation) -> BTreeMap<String, Vec<ListedService>> {
    mesh.peers
        .values()
        .map(|p| {
            let mut listed: Vec<ListedService> = mesh
                .export_view(p)
                .services
                .into_values()
                .map(|s| ListedService::new(&s.exported_name, Some((&s.local, &s.local_hostname))))
                .collect();
            listed.sort_by(|a, b| a.exported_name.cmp(&b.exported_name));
            (p.name.to_string(), listed)
        })
        .collect()
}

/// Recomputes the import mapping of one peer on every imports update: `ImportConflict` when
/// two exports claim one local name (or would shadow a local service), `ExportNotImported`
/// when some of the peer's exports match no import rule.
fn watch_mapping(
    set: meshfed_core::import::ImportSet,
    catalog: meshfed_core::Catalog,
    mut imports: watch::Receiver<Arc<meshfed_core::stream::ImportState>>,
    out: Mapping,
) {
    tokio::spawn(async move {
        loop {
            let services: Vec<_> = imports
                .borrow_and_update()
                .services()
                .values()
                .cloned()
                .collect();
            let m = meshfed_core::import::import_mapping(&set, &services, &catalog);
            let now = unix_ms(SystemTime::now());
            let conflict = m.conflicts.first().map(|c| {
                (
                    c.reason(),
                    format!("{} import conflict(s)", m.conflicts.len()),
                )
            });
            let conditions = vec![
                meshfed_peering::status::Condition {
                    type_: "ImportConflict",
                    status: conflict.is_some(),
                    reason: conflict.as_ref().map_or("NoConflict", |c| c.0).to_owned(),
                    message: conflict.map(|c| c.1).unwrap_or_default(),
                    last_transition_ms: now,
                },
                meshfed_peering::status::Condition {
                    type_: "ExportNotImported",
                    status: !m.unmatched.is_empty(),
                    reason: if m.unmatched.is_empty() {
                        "AllImported"
                    } else {
                        "NoMatchingImportRule"
                    }
                    .to_owned(),
                    message: format!(
                        "{} of the peer's {} exports match no import rule",
                        m.unmatched.len(),
                        services.len()
                    ),
                    last_transition_ms: now,
                },
            ];
            let mut listed: Vec<ListedService> = m
                .imports
                .iter()
                .map(|i| ListedService::new(&i.exported_name, Some((&i.local_key, &i.hostname))))
                .chain(m.unmatched.iter().map(|h| ListedService::new(h, None)))
                .collect();
            listed.sort_by(|a, b| a.exported_name.cmp(&b.exported_name));
            if let Ok(mut o) = out.lock() {
                o.insert(set.peer.to_string(), (conditions, listed));
            }
            if imports.changed().await.is_err() {
                return;
            }
        }
    });
}

/// Redeems a token secret once and takes the caller's bundle: checked against every bundle
/// held first, so a refused bundle does not burn the secret; then the secret is spent (once,
/// even across replicas sharing the store), the bundle stored and put in force.
fn redeemer(
    trust_store: Arc<dyn TrustStore>,
    live: verify::SharedBundles,
) -> meshfed_peering::server::Redeemer {
    Arc::new(move |r: meshfed_peering::server::Redemption| {
        let (trust_store, live) = (trust_store.clone(), live.clone());
        Box::pin(async move {
            let fail = |reason: &str, e: &dyn std::fmt::Display| format!("{reason}: {e}");
            let mut held = (**live.load()).clone();
            held.insert(r.bundle.clone())
                .map_err(|e| fail(e.reason(), &e))?;
            let token = meshfed_trust::store::redeem(&*trust_store, &r.secret, SystemTime::now())
                .await
                .map_err(|e| fail(e.reason(), &e))?;
            trust_store
                .save_peer_bundle(&r.bundle)
                .await
                .map_err(|e| fail(e.reason(), &e))?;
            live.rcu(|cur| {
                let mut next = (**cur).clone();
                let _ = next.insert(r.bundle.clone());
                next
            });
            note(&format!(
                "peering token {token} redeemed by mesh {:?} ({}); its bundle is stored in {}. Its egress identity (clientID): {}",
                r.mesh,
                r.trust_domain,
                trust_store.location(),
                r.client_id.to_client_id()
            ));
            Ok(())
        })
    })
}

pub fn status(args: StatusArgs) -> Result<ExitCode> {
    let body = admin::get(args.admin, "/status", Duration::from_secs(5)).with_context(|| {
        format!(
            "reading status from {} (is `meshfed peering run` or `meshfed control --peering` running?)",
            args.admin
        )
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&body).context("the admin endpoint sent invalid JSON")?;
    // A control plane's status holds its peering node's under `peering`.
    let v = match v.get("peering") {
        Some(p) if p.is_object() => p.clone(),
        _ => v,
    };
    match args.output {
        crate::OutputFormat::Json => emit(&format!("{}\n", serde_json::to_string_pretty(&v)?))?,
        crate::OutputFormat::Yaml => emit(&serde_saphyr::to_string(&v)?)?,
        crate::OutputFormat::Table => emit(&render(&v))?,
    }
    Ok(ExitCode::SUCCESS)
}

fn ago(ms: &serde_json::Value) -> String {
    let Some(ms) = ms.as_u64() else {
        return "-".into();
    };
    let now = unix_ms(SystemTime::now());
    let s = now.saturating_sub(ms) / 1000;
    if s < 120 {
        format!("{s}s ago")
    } else if s < 7200 {
        format!("{}m ago", s / 60)
    } else {
        format!("{}h ago", s / 3600)
    }
}

fn render(v: &serde_json::Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Mesh {} ({}), peering on {}",
        v["mesh"].as_str().unwrap_or("?"),
        v["trustDomain"].as_str().unwrap_or("?"),
        v["listen"].as_str().unwrap_or("?")
    );
    let mut t = crate::table::Table::new(&[
        "IMPORTING FROM",
        "STATE",
        "SERVICES",
        "VERSION",
        "STALE",
        "LAST SYNC",
        "LAST HEARTBEAT",
        "CONDITIONS",
    ]);
    for p in v["imports"].as_array().into_iter().flatten() {
        let conds: Vec<String> = p["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                format!(
                    "{}={}({})",
                    c["type"].as_str().unwrap_or(""),
                    if c["status"].as_bool() == Some(true) {
                        "True"
                    } else {
                        "False"
                    },
                    c["reason"].as_str().unwrap_or("")
                )
            })
            .collect();
        t.row(vec![
            p["peer"].as_str().unwrap_or("?").to_owned(),
            p["state"].as_str().unwrap_or("?").to_owned(),
            p["importedServices"].to_string(),
            p["importedVersion"]
                .as_u64()
                .map_or("-".into(), |x| x.to_string()),
            p["stale"].to_string(),
            ago(&p["lastFullSyncMs"]),
            ago(&p["lastHeartbeatMs"]),
            conds.join(" "),
        ]);
    }
    out.push_str(&t.render("  "));
    let mut t = crate::table::Table::new(&[
        "EXPORTING TO",
        "CONNECTED",
        "SERVICES",
        "ACKED VERSION",
        "LAST CLOSE",
        "LAST NACK",
    ]);
    for (peer, e) in v["exports"].as_object().into_iter().flatten() {
        t.row(vec![
            peer.clone(),
            e["connected"].to_string(),
            e["exportedServices"].to_string(),
            e["lastAckedVersion"]
                .as_u64()
                .map_or("-".into(), |x| x.to_string()),
            e["lastCloseReason"].as_str().unwrap_or("-").to_owned(),
            e["lastNackReason"].as_str().unwrap_or("-").to_owned(),
        ]);
    }
    out.push_str(&t.render("  "));
    for r in v["refused"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  refused: {} ({})",
            r[0].as_str().unwrap_or("?"),
            r[1].as_str().unwrap_or("?")
        );
    }
    out
}
