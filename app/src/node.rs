//! The peering node of one mesh: the exporter serving each peer its export view, an importer
//! per peer, the import store, and the node's typed status. `meshfed peering run` runs it on
//! its own; `meshfed control --peering` runs it inside the control plane.
//!
//! [`Node::build`] binds the peering endpoint and returns the running node, which owns every
//! task it started ([`Tasks`]): [`Node::stop`] stops them all, and [`Node::failed`] reports a
//! task that ended on its own. Its status is a [`NodeStatus`] on a watch channel, recomputed
//! when anything it shows changes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use meshfed_control::imports::{PeerFeed, ServiceHealth};
use meshfed_core::federation::{MeshFederation, Peer};
use meshfed_core::session::SessionConfig;
use meshfed_core::stream::{ImportState, Limits};
use meshfed_core::{Hostname, SpiffeId, TrustDomain};
use meshfed_peering::client::{self, ImporterConfig};
use meshfed_peering::server::{
    ExportPeer, Exporter, ExporterConfig, ExporterEvent, ExporterOptions,
};
use meshfed_peering::status::{
    Condition, ConditionType, ExportSide, ImportSide, ListedService, NodeStatus, PeerStatus,
    Refusal, unix_ms,
};
use meshfed_peering::tls;
use meshfed_trust::ca::{CaError, CertificateAuthority, DEFAULT_SVID_TTL};
use meshfed_trust::store::TrustStore;
use meshfed_trust::verify::{
    self, Expect, SpiffeClientVerifier, SpiffeServerVerifier, SvidResolver,
};
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use crate::tasks::{TaskFailure, Tasks};

/// Issues an SVID for one of the node's identities, from the mesh CA as it signs now.
pub type Issuer = Arc<dyn Fn(&SpiffeId) -> Result<meshfed_trust::Svid, CaError> + Send + Sync>;

/// Why the node could not start or change.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("binding the peering endpoint {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("issuing a certificate for {id}: {source}")]
    Issue { id: SpiffeId, source: CaError },
    #[error("an identity of the node is invalid: {0}")]
    Identity(#[from] meshfed_core::id::SpiffeIdError),
    #[error("TLS set-up: {0}")]
    Tls(#[from] rustls::Error),
    #[error("removing peer {peer}'s imports from the store: {source}")]
    Forget {
        peer: String,
        source: meshfed_store::StoreError,
    },
    #[error(transparent)]
    File(#[from] crate::files::FileError),
    #[error(transparent)]
    Admin(#[from] meshfed_proxy::admin::AdminError),
}

impl NodeError {
    /// A stable reason for logs and status.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Bind { .. } => "BindFailed",
            Self::Issue { source, .. } => source.reason(),
            Self::Identity(e) => e.reason(),
            Self::Tls(_) => "TlsSetupFailed",
            Self::Forget { source, .. } => source.reason(),
            Self::File(e) => e.reason(),
            Self::Admin(e) => e.reason(),
        }
    }
}

/// What a node is built from.
#[derive(Clone)]
pub struct NodeConfig {
    /// The mesh as it is at the start ([`Node::set_exports`] and [`Node::sync_peers`] follow
    /// its changes).
    pub mesh: MeshFederation,
    /// Where the node's certificates come from.
    pub issue: Issuer,
    /// The live set of trust bundles the node's verifiers use (ours and the peers').
    pub bundles: verify::SharedBundles,
    /// The peering endpoint (port 0 picks one).
    pub listen: SocketAddr,
    /// Directory of the persisted imports (a rebuildable cache).
    pub store: Option<PathBuf>,
    pub heartbeat: Duration,
    /// Silence after which a peer is Failing.
    pub liveness: Duration,
    /// Where peer bundles and token records are kept (the CA folder, or the cluster).
    pub trust_store: Arc<dyn TrustStore>,
    /// This control-plane replica's name (its pod in Kubernetes mode), sent to every peer so
    /// that each replica imports on a stream of its own; empty for a single node.
    pub replica: String,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("mesh", &self.mesh.mesh)
            .field("listen", &self.listen)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// A node on its own (`meshfed peering run`): the mesh file, the mesh CA folder it signs
/// with and keeps peer bundles in, and a loopback admin endpoint serving its status.
#[derive(Debug, Clone)]
pub struct StandaloneConfig {
    pub mesh: PathBuf,
    pub ca_dir: PathBuf,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub store: Option<PathBuf>,
    pub heartbeat: Duration,
    pub liveness: Duration,
}

/// A running peering node: the exporter and an importer per peer. The peers follow the mesh
/// ([`Node::sync_peers`]): a new ServiceMeshPeer starts importing, a removed one stops.
pub struct Node {
    listen: SocketAddr,
    status: watch::Receiver<Arc<NodeStatus>>,
    feeds: watch::Sender<Vec<PeerFeed>>,
    peers: Arc<Mutex<BTreeMap<String, PeerRun>>>,
    parts: Arc<StatusParts>,
    exports: watch::Sender<Arc<ExporterConfig>>,
    /// The exporter's own identity.
    server: (SpiffeId, Arc<SvidResolver>),
    spawner: Spawner,
    /// One peer sync at a time.
    syncing: tokio::sync::Mutex<()>,
    tasks: Tasks,
    span: tracing::Span,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

/// The conditions of applying our import rules to one peer's exports, and every export with
/// the local service it became.
type Mapped = (Vec<Condition>, Vec<ListedService>);

/// What the status is computed from; every writer calls `changed.notify_one()`.
#[derive(Debug)]
struct StatusParts {
    mesh: String,
    trust_domain: String,
    listen: String,
    /// Each importing peer's status.
    statuses: Mutex<BTreeMap<String, watch::Receiver<PeerStatus>>>,
    /// The exporter side per peer, and recent refusals.
    exports: Mutex<(BTreeMap<String, ExportSide>, Vec<Refusal>)>,
    /// Per peer, what it is exported.
    export_lists: Mutex<BTreeMap<String, Vec<ListedService>>>,
    /// Per peer, the conditions of applying our import rules and every export with the local
    /// service it became.
    mapping: Mutex<BTreeMap<String, Mapped>>,
    changed: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl StatusParts {
    /// The status as it is now; marks every importer status seen.
    fn compute(&self) -> NodeStatus {
        let (mut exports, refused) = lock(&self.exports).clone();
        for (peer, listed) in lock(&self.export_lists).iter() {
            let side = exports.entry(peer.clone()).or_default();
            side.exported_services = listed.len();
            side.services.clone_from(listed);
        }
        let mapping = lock(&self.mapping);
        let imports = lock(&self.statuses)
            .values_mut()
            .map(|s| {
                let mut status = s.borrow_and_update().clone();
                let mut services = Vec::new();
                if let Some((extra, listed)) = mapping.get(&status.peer) {
                    status.conditions.extend(extra.iter().cloned());
                    services.clone_from(listed);
                }
                ImportSide { status, services }
            })
            .collect();
        NodeStatus {
            mesh: self.mesh.clone(),
            trust_domain: self.trust_domain.clone(),
            listen: self.listen.clone(),
            imports,
            exports,
            refused,
        }
    }

    fn refused(&self, from: String, reason: String) {
        let r = &mut lock(&self.exports).1;
        r.push(Refusal { from, reason });
        while r.len() > NodeStatus::MAX_REFUSED {
            r.remove(0);
        }
        self.changed.notify_one();
    }
}

/// Keeps `tx` equal to the computed status: recomputes when a writer says so or an importer's
/// status changes.
async fn publish_status(parts: Arc<StatusParts>, tx: watch::Sender<Arc<NodeStatus>>) {
    loop {
        let next = parts.compute();
        tx.send_if_modified(|cur| {
            if **cur == next {
                return false;
            }
            *cur = Arc::new(next);
            true
        });
        let receivers: Vec<_> = lock(&parts.statuses).values().cloned().collect();
        type Changed = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
        let mut waits: Vec<Changed> = receivers
            .into_iter()
            .map(|mut r| -> Changed {
                Box::pin(async move {
                    // A stopped importer's status never changes again.
                    if r.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                })
            })
            .collect();
        // select_all needs at least one future.
        waits.push(Box::pin(std::future::pending()));
        let any_importer = futures_util::future::select_all(waits);
        tokio::select! {
            () = parts.changed.notified() => {}
            _ = any_importer => {}
        }
    }
}

/// What starting an importer takes.
struct Spawner {
    mesh: String,
    trust_domain: TrustDomain,
    bundles: verify::SharedBundles,
    heartbeat: Duration,
    liveness: Duration,
    trust_store: Arc<dyn TrustStore>,
    /// Taken when the node stops, so a stopped node no longer holds the store's lock.
    store: Mutex<Option<(PathBuf, Arc<meshfed_store::Store>)>>,
    issue: Issuer,
    replica: String,
}

/// A peer the node imports from.
struct PeerRun {
    importer: client::Importer,
    feed: PeerFeed,
    identity: (SpiffeId, Arc<SvidResolver>),
    /// What it was started from; a change restarts it.
    started_from: String,
}

/// What an importer is started from (its exports and the rest of the peer do not matter).
fn started_from(mesh: &MeshFederation, p: &Peer) -> String {
    format!(
        "{:?}|{}|{}|{:?}|{:?}",
        p.addresses,
        p.discovery_port,
        p.trust_domain,
        mesh.egress_identity(p).ok(),
        p.imports
    )
}

fn issue_for(issue: &Issuer, id: &SpiffeId) -> Result<meshfed_trust::Svid, NodeError> {
    issue(id).map_err(|source| NodeError::Issue {
        id: id.clone(),
        source,
    })
}

impl Spawner {
    /// Starts importing from `p`; `None` (logged) when its address does not resolve.
    async fn spawn(
        &self,
        mesh: &MeshFederation,
        p: &Peer,
        tasks: &Tasks,
        parts: &Arc<StatusParts>,
    ) -> Result<Option<PeerRun>, NodeError> {
        let Some(host) = p.addresses.first() else {
            return Ok(None);
        };
        let address = match tokio::net::lookup_host((host.as_str(), p.discovery_port)).await {
            Ok(mut a) => match a.next() {
                Some(a) => a,
                None => {
                    tracing::warn!(peer = %p.name, reason = "PeerAddressUnresolved", "{host} has no address");
                    return Ok(None);
                }
            },
            Err(e) => {
                tracing::warn!(peer = %p.name, reason = "PeerAddressUnresolved", "resolving {host}: {e}");
                return Ok(None);
            }
        };
        let provider = verify::provider();
        let id = mesh.egress_identity(p)?;
        let svid = issue_for(&self.issue, &id)?;
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
                    // Each session its own jitter, so importers that lost their peers
                    // together do not reconnect in step.
                    seed: random_seed(),
                    ..SessionConfig::default()
                },
                limits: Limits::default(),
                connect_timeout: Duration::from_secs(5),
                bundles: Some(self.bundles.clone()),
                trust_store: Some(self.trust_store.clone()),
                replica: self.replica.clone(),
            },
            tls,
            lock(&self.store).as_ref().map(|(_, s)| s.clone()),
        );
        let feed = PeerFeed {
            peer: p.name.clone(),
            imports: importer.imports.clone(),
            health: importer.health.clone(),
            status: importer.status.clone(),
        };
        if let Some(set) = &p.imports {
            tasks.spawn_finite(
                "import-mapping",
                watch_mapping(
                    set.clone(),
                    mesh.catalog.clone(),
                    importer.imports.clone(),
                    parts.clone(),
                )
                .instrument(tracing::info_span!("import-mapping", peer = %p.name)),
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
    /// Starts the peering of `config.mesh`: binds the peering endpoint, serves each peer its
    /// export view there, and imports from every peer.
    pub async fn build(config: NodeConfig) -> Result<Self, NodeError> {
        let span =
            tracing::info_span!("component", component = %"peering", mesh = %config.mesh.mesh);
        Self::build_in(config, span.clone()).instrument(span).await
    }

    async fn build_in(config: NodeConfig, span: tracing::Span) -> Result<Self, NodeError> {
        let mesh = &config.mesh;
        let bundles = config.bundles.clone();
        let provider = verify::provider();
        let now = SystemTime::now();
        let tasks = Tasks::new();
        warn_missing_bundles(mesh, &bundles.load());
        // The exporter: serves each peer its view. Any domain we hold a bundle for may
        // complete the handshake (peers come and go); the stream then admits only a configured
        // peer's exact clientID.
        let server_id =
            SpiffeId::for_service_account(&mesh.trust_domain, &mesh.namespace, "meshfed-peering")?;
        let server_svid = issue_for(&config.issue, &server_id)?;
        let server_resolver = Arc::new(SvidResolver::new(&server_svid, provider.clone())?);
        let server_tls = Arc::new(verify::server_config(
            server_resolver.clone(),
            // Anonymous clients may connect only to redeem a peering token; the stream needs
            // mTLS.
            Arc::new(
                SpiffeClientVerifier::new(
                    bundles.clone(),
                    Expect::AnyKnownDomain,
                    provider.clone(),
                )
                .allow_anonymous(),
            ),
            provider.clone(),
        )?);
        // Health arrives with the sidecars' readiness; nothing is claimed until then.
        let (exports_tx, config_rx) = watch::channel(Arc::new(ExporterConfig {
            mesh: mesh.mesh.to_string(),
            trust_domain: mesh.trust_domain.clone(),
            peers: export_peers(mesh, &ServiceHealth::new()),
            bundle: bundles.load().get(&mesh.trust_domain).cloned(),
        }));
        let options = ExporterOptions {
            heartbeat: config.heartbeat,
            liveness: config.liveness * 2,
            ..ExporterOptions::default()
        };
        let (events_tx, mut events_rx) =
            tokio::sync::mpsc::channel(meshfed_peering::server::EVENT_QUEUE);
        let epoch = unix_ms(now) ^ u64::from(std::process::id()).rotate_left(40);
        let exporter = Exporter::new(config_rx, options, epoch, events_tx)
            .with_redeemer(redeemer(config.trust_store.clone(), bundles.clone()));
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| NodeError::Bind {
                addr: config.listen,
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| NodeError::Bind {
            addr: config.listen,
            source,
        })?;
        let lists = export_lists(mesh);
        let parts = Arc::new(StatusParts {
            mesh: mesh.mesh.to_string(),
            trust_domain: mesh.trust_domain.to_string(),
            listen: bound.to_string(),
            statuses: Mutex::default(),
            exports: Mutex::new((
                lists
                    .keys()
                    .map(|k| (k.clone(), ExportSide::default()))
                    .collect(),
                Vec::new(),
            )),
            export_lists: Mutex::new(lists),
            mapping: Mutex::default(),
            changed: Notify::new(),
        });
        let (fail_tx, mut fail_rx) =
            tokio::sync::mpsc::channel(meshfed_peering::tls::FAILURE_QUEUE);
        let incoming = tls::incoming(listener, server_tls, fail_tx);
        let drain = tasks.drain();
        tasks.spawn_graceful("exporter", async move {
            exporter
                .serve(incoming, async move { drain.cancelled().await })
                .await
        });
        // Exporter-side status from its events.
        {
            let parts = parts.clone();
            tasks.spawn_infallible("exporter-events", async move {
                loop {
                    tokio::select! {
                        Some(ev) = events_rx.recv() => on_exporter_event(&parts, ev),
                        Some(f) = fail_rx.recv() => {
                            tracing::info!(remote = %f.remote, reason = %f.reason, "refused a peering connection");
                            parts.refused(f.remote.to_string(), f.reason);
                        }
                        else => std::future::pending::<()>().await,
                    }
                }
            });
        }
        let (status_tx, status) = watch::channel(Arc::new(parts.compute()));
        tasks.spawn_infallible("status", publish_status(parts.clone(), status_tx));
        let store = match &config.store {
            None => None,
            Some(path) => match meshfed_store::Store::open(path) {
                // The store is a cache: a disk that is full or read-only, a folder that cannot
                // be made, cost the imports' survival across a restart, not the peering.
                Err(e) => {
                    tracing::error!(
                        reason = e.reason(),
                        "the store {} cannot be used: {e}; peering runs without it (imports are not kept across a restart)",
                        path.display()
                    );
                    None
                }
                Ok((store, rebuilt)) => {
                    if let Some(r) = rebuilt {
                        tracing::warn!(
                        reason = %r.reason,
                        "store {} rebuilt: {}; the old files are in {}",
                        path.display(),
                        r.detail,
                            r.moved_to.display()
                        );
                    }
                    Some((path.clone(), Arc::new(store)))
                }
            },
        };
        let node = Node {
            listen: bound,
            status,
            feeds: watch::channel(Vec::new()).0,
            peers: Arc::default(),
            parts,
            exports: exports_tx,
            server: (server_id, server_resolver),
            spawner: Spawner {
                mesh: mesh.mesh.to_string(),
                trust_domain: mesh.trust_domain.clone(),
                bundles,
                heartbeat: config.heartbeat,
                liveness: config.liveness,
                trust_store: config.trust_store.clone(),
                store: Mutex::new(store),
                issue: config.issue.clone(),
                replica: config.replica.clone(),
            },
            syncing: tokio::sync::Mutex::default(),
            tasks,
            span,
        };
        node.sync_peers(mesh).await?;
        // Renew the node's SVIDs at half life.
        {
            let (peers, server, issue) = (
                node.peers.clone(),
                node.server.clone(),
                node.spawner.issue.clone(),
            );
            node.tasks.spawn_infallible("renew", async move {
                loop {
                    tokio::time::sleep(DEFAULT_SVID_TTL / 2).await;
                    if let Err(e) = reissue_all(&server, &peers, &*issue) {
                        tracing::warn!(
                            reason = e.reason(),
                            "renewing the peering certificates: {e}"
                        );
                    }
                }
            });
        }
        tracing::info!(listen = %bound, "peering started");
        Ok(node)
    }

    /// Where the peering endpoint listens.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The node's status, as it changes.
    pub fn status(&self) -> watch::Receiver<Arc<NodeStatus>> {
        self.status.clone()
    }

    /// Serves what a changed `mesh` exports, with each exported service's healthy and total
    /// workloads (the peers themselves follow through [`Node::sync_peers`]).
    pub fn set_exports(&self, mesh: &MeshFederation, health: &ServiceHealth) {
        let peers = export_peers(mesh, health);
        {
            let next = export_lists(mesh);
            let mut l = lock(&self.parts.export_lists);
            if *l != next {
                *l = next;
                self.parts.changed.notify_one();
            }
        }
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
    pub fn reissue(&self, ca: &CertificateAuthority) -> Result<(), NodeError> {
        reissue_all(&self.server, &self.peers, &|id: &SpiffeId| {
            ca.issue(id, DEFAULT_SVID_TTL, SystemTime::now())
        })
    }

    /// The peers' import feeds, as the peers change.
    pub fn feeds(&self) -> watch::Receiver<Vec<PeerFeed>> {
        self.feeds.subscribe()
    }

    /// Publishes the running peers' feeds and statuses.
    fn publish(&self) {
        let peers = lock(&self.peers);
        *lock(&self.parts.statuses) = peers
            .iter()
            .map(|(n, r)| (n.clone(), r.importer.status.clone()))
            .collect();
        lock(&self.parts.mapping).retain(|n, _| peers.contains_key(n));
        let feeds: Vec<_> = peers.values().map(|r| r.feed.clone()).collect();
        drop(peers);
        self.parts.changed.notify_one();
        self.feeds.send_replace(feeds);
    }

    /// Makes the importers follow `mesh`'s ServiceMeshPeers: a new peer starts importing, a
    /// removed one stops and its persisted state goes, a changed one restarts.
    pub async fn sync_peers(&self, mesh: &MeshFederation) -> Result<(), NodeError> {
        self.sync_peers_in(mesh).instrument(self.span.clone()).await
    }

    async fn sync_peers_in(&self, mesh: &MeshFederation) -> Result<(), NodeError> {
        let _one = self.syncing.lock().await;
        let wanted: BTreeMap<String, String> = mesh
            .peers
            .values()
            .map(|p| (p.name.to_string(), started_from(mesh, p)))
            .collect();
        let stale: Vec<(String, PeerRun)> = {
            let mut peers = lock(&self.peers);
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
            let why = if wanted.contains_key(&name) {
                "PeerChanged"
            } else {
                "PeerDeleted"
            };
            run.importer.end(why).await;
            if !wanted.contains_key(&name) {
                tracing::info!(peer = %name, "peer removed: no longer importing from it");
                self.clean(&name)?;
            }
        }
        for p in mesh.peers.values() {
            if lock(&self.peers).contains_key(p.name.as_str()) {
                continue;
            }
            if let Some(run) = self
                .spawner
                .spawn(mesh, p, &self.tasks, &self.parts)
                .await?
            {
                tracing::info!(peer = %p.name, address = %run_address(p), "importing from peer");
                lock(&self.peers).insert(p.name.to_string(), run);
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
    fn clean(&self, peer: &str) -> Result<(), NodeError> {
        let store = lock(&self.spawner.store).as_ref().map(|(_, s)| s.clone());
        if let Some(store) = store
            && let Ok(name) = peer.parse()
        {
            store
                .remove_peer(&name)
                .map_err(|source| NodeError::Forget {
                    peer: peer.to_owned(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Forgets a deleted peer: stops importing from it and removes its persisted imports.
    pub async fn forget_peer(&self, peer: &str) -> Result<(), NodeError> {
        let run = lock(&self.peers).remove(peer);
        if let Some(run) = run {
            run.importer.end("PeerDeleted").await;
            self.clean(peer)?;
            self.publish();
        }
        Ok(())
    }

    /// Builds a node on its own from its files ([`StandaloneConfig`]) and serves its status
    /// on the admin endpoint; returns the node and the admin endpoint's address.
    pub async fn standalone(config: StandaloneConfig) -> Result<(Self, SocketAddr), NodeError> {
        let mesh = crate::files::load_mesh(&config.mesh)?;
        let (ca, held) = crate::files::load_ca_for(&config.ca_dir, &mesh)?;
        let ca = Arc::new(ca);
        let node = Self::build(NodeConfig {
            issue: Arc::new(move |id: &SpiffeId| ca.issue(id, DEFAULT_SVID_TTL, SystemTime::now())),
            bundles: verify::shared(held),
            listen: config.listen,
            store: config.store,
            heartbeat: config.heartbeat,
            liveness: config.liveness,
            trust_store: Arc::new(meshfed_trust::store::DirStore::new(
                &config.ca_dir,
                mesh.trust_domain.clone(),
            )),
            replica: String::new(),
            mesh,
        })
        .await?;
        let admin = node.serve_admin(config.admin).await?;
        Ok((node, admin))
    }

    /// Serves the node's status (`/status`, loopback callers only) and health on an admin
    /// endpoint the node owns; returns its address.
    pub async fn serve_admin(&self, addr: SocketAddr) -> Result<SocketAddr, NodeError> {
        let status = self.status();
        let mut admin = meshfed_proxy::admin::Admin::default();
        admin.pages.insert(
            "/status",
            meshfed_proxy::admin::Page::status(move || {
                serde_json::to_string_pretty(&**status.borrow()).unwrap_or_default()
            }),
        );
        let (bound, task) = meshfed_proxy::admin::serve(addr, admin).await?;
        self.tasks.adopt("admin", task);
        tracing::info!(parent: &self.span, admin = %bound, "admin endpoint on http://{bound}/status");
        Ok(bound)
    }

    /// Waits until one of the node's tasks ends on its own (the node no longer works as it
    /// should); says which and why.
    pub async fn failed(&self) -> TaskFailure {
        self.tasks.failed().await
    }

    /// Stops everything the node started: the importers (closing their streams), the
    /// exporter (closing its listener and streams), and every other task.
    pub async fn stop(&self) {
        async {
            let peers = std::mem::take(&mut *lock(&self.peers));
            for (_, run) in peers {
                run.importer.stop().await;
            }
            self.tasks.shutdown(Duration::from_secs(5)).await;
            // The importers are gone: the last handle on the store goes with this one.
            lock(&self.spawner.store).take();
            tracing::info!("peering stopped");
        }
        .instrument(self.span.clone())
        .await;
    }
}

/// A seed from the OS's random source (std's `RandomState` keys are drawn from it).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::hash::RandomState::new().build_hasher();
    h.write_u64(unix_ms(SystemTime::now()));
    h.finish()
}

fn run_address(p: &Peer) -> String {
    format!(
        "{}:{}",
        p.addresses.first().map_or("", |a| a.as_str()),
        p.discovery_port
    )
}

fn on_exporter_event(parts: &StatusParts, ev: ExporterEvent) {
    {
        let mut s = lock(&parts.exports);
        match ev {
            ExporterEvent::Connected { peer, replica } => {
                tracing::info!(peer = %peer, replica = %replica, "peer connected to import our exports");
                let e = s.0.entry(peer.to_string()).or_default();
                e.replicas.insert(replica);
                e.connected = true;
            }
            ExporterEvent::Closed {
                peer,
                replica,
                reason,
            } => {
                tracing::info!(peer = %peer, replica = %replica, reason = %reason, "peer's import stream closed");
                let e = s.0.entry(peer.to_string()).or_default();
                e.replicas.remove(&replica);
                e.connected = !e.replicas.is_empty();
                e.last_close_reason = Some(reason);
            }
            ExporterEvent::Acked {
                peer,
                replica,
                version,
            } => {
                tracing::debug!(peer = %peer, replica = %replica, version, "peer ACKed our exports");
                s.0.entry(peer.to_string()).or_default().last_acked_version = Some(version);
            }
            ExporterEvent::Nacked {
                peer,
                replica,
                reason,
                ..
            } => {
                tracing::warn!(peer = %peer, replica = %replica, reason = %reason, "peer NACKed our exports");
                s.0.entry(peer.to_string()).or_default().last_nack_reason = Some(reason);
            }
            ExporterEvent::Refused { id, reason } => {
                tracing::warn!(client_id = %id, reason, "refused a peering stream");
                s.1.push(Refusal {
                    from: id,
                    reason: reason.to_owned(),
                });
                while s.1.len() > NodeStatus::MAX_REFUSED {
                    s.1.remove(0);
                }
            }
        }
    }
    parts.changed.notify_one();
}

/// Issues the exporter's identity and every importing peer's a new SVID.
fn reissue_all(
    server: &(SpiffeId, Arc<SvidResolver>),
    peers: &Mutex<BTreeMap<String, PeerRun>>,
    issue: &(dyn Fn(&SpiffeId) -> Result<meshfed_trust::Svid, CaError> + Send + Sync),
) -> Result<(), NodeError> {
    let mut all = vec![server.clone()];
    all.extend(lock(peers).values().map(|r| r.identity.clone()));
    for (id, r) in all {
        let svid = issue(&id).map_err(|source| NodeError::Issue {
            id: id.clone(),
            source,
        })?;
        r.set(&svid)?;
    }
    Ok(())
}

/// Logs each peer we hold no trust bundle for.
pub fn warn_missing_bundles(mesh: &MeshFederation, held: &meshfed_trust::TrustBundleSet) {
    for p in mesh.peers.values() {
        if held.get(&p.trust_domain).is_none() {
            tracing::warn!(
                peer = %p.name,
                reason = "NoPeerBundle",
                "no bundle for the peer's trust domain {}; import one with `meshfed trust bundle import` or a peering token",
                p.trust_domain
            );
        }
    }
}

/// What `mesh` exports to each of its peers, with each exported service's healthy and total
/// workloads where `health` knows them.
fn export_peers(mesh: &MeshFederation, health: &ServiceHealth) -> Vec<ExportPeer> {
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
/// when some of the peer's exports match no import rule. Ends when the importer stops.
async fn watch_mapping(
    set: meshfed_core::import::ImportSet,
    catalog: meshfed_core::Catalog,
    mut imports: watch::Receiver<Arc<ImportState>>,
    parts: Arc<StatusParts>,
) {
    let mut last: Option<Mapped> = None;
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
        let mut conditions = vec![
            Condition {
                type_: ConditionType::ImportConflict,
                status: conflict.is_some(),
                reason: conflict.as_ref().map_or("NoConflict", |c| c.0).to_owned(),
                message: conflict.map(|c| c.1).unwrap_or_default(),
                last_transition_ms: now,
            },
            Condition {
                type_: ConditionType::ExportNotImported,
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
        // A condition keeps its transition time while its status and reason stay.
        if let Some((before, _)) = &last {
            for c in &mut conditions {
                if let Some(b) = before.iter().find(|b| b.type_ == c.type_)
                    && b.status == c.status
                    && b.reason == c.reason
                {
                    c.last_transition_ms = b.last_transition_ms;
                }
            }
        }
        for c in conditions.iter().filter(|c| c.status) {
            tracing::warn!(condition = %c.type_, reason = %c.reason, "{}", c.message);
        }
        let mut listed: Vec<ListedService> = m
            .imports
            .iter()
            .map(|i| ListedService::new(&i.exported_name, Some((&i.local_key, &i.hostname))))
            .chain(m.unmatched.iter().map(|h| ListedService::new(h, None)))
            .collect();
        listed.sort_by(|a, b| a.exported_name.cmp(&b.exported_name));
        let entry = (conditions, listed);
        if last.as_ref() != Some(&entry) {
            lock(&parts.mapping).insert(set.peer.to_string(), entry.clone());
            parts.changed.notify_one();
            last = Some(entry);
        }
        if imports.changed().await.is_err() {
            return;
        }
    }
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
            let fail = |reason: &'static str, e: &dyn std::fmt::Display| {
                meshfed_peering::server::Refused {
                    reason,
                    detail: e.to_string(),
                }
            };
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
            tracing::info!(
                token = %token,
                peer_mesh = %r.mesh,
                peer_trust_domain = %r.trust_domain,
                client_id = %r.client_id.to_client_id(),
                "peering token redeemed; the peer's bundle is stored in {}",
                trust_store.location()
            );
            Ok(())
        })
    })
}
