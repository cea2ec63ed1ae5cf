//! The federation gateways of one mesh for one peer as a running component, configured from
//! mesh files ([`GatewayMode::File`]) or joined to the control plane
//! ([`GatewayMode::Joined`]: certificates and configuration from its stream, followed live).
//! The ingress serves what this mesh exports to the peer; the egress carries local sidecars
//! to what the peer exports to us; the discovery port forwards the peering stream.
//!
//! [`Gateways::build`] binds every listener before it returns; [`Gateways::drain`] stops
//! accepting and lets connections in flight finish up to a deadline.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use meshfed_control::GatewayPlan;
use meshfed_control::client::{Client, ClientState, Received, SnapshotRefused, Update};
use meshfed_core::Hostname;
use meshfed_core::federation::{MeshFederation, Peer};
use meshfed_gateway::relay::{self, EgressOptions, EgressRoute, IngressOptions, IngressPeer};
use meshfed_gateway::stats::GatewayMetrics;
use meshfed_gateway::tunnel::PeerIdentity;
pub use meshfed_gateway::tunnel::Transport;
use meshfed_trust::bootstrap::Bootstrap;
use meshfed_trust::ca::DEFAULT_SVID_TTL;
use meshfed_trust::verify::{self, SvidResolver};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::files::{self, FileError};
use crate::sidecar::{SidecarError, certify_first};
use crate::tasks::{TaskFailure, Tasks};

/// Where the gateways' configuration comes from.
#[derive(Debug, Clone)]
pub enum GatewayMode {
    /// This mesh's file, and for the egress the peer mesh's file (what it exports to us and
    /// its ingress's identity); SVIDs from the CA in [`GatewayOptions::dir`].
    File {
        mesh: PathBuf,
        peer_mesh: Option<PathBuf>,
    },
    /// The control plane, joined with a bootstrap file, as the gateways named in
    /// `spec.gateways` (default `ingress-<peer>` and `egress-<peer>`).
    Joined {
        bootstrap: PathBuf,
        ingress_name: Option<String>,
        egress_name: Option<String>,
    },
}

/// A listener to serve: not at all (`None`), at an address, or where the mesh declares it
/// (`Some(None)`).
pub type Listen = Option<Option<SocketAddr>>;

/// What the gateways are built from.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    pub mode: GatewayMode,
    /// The `ServiceMeshPeer` (by name) these gateways serve.
    pub peer: String,
    /// The CA folder (file mode's SVIDs; the ingress's QUIC reset key in both modes).
    pub dir: PathBuf,
    pub ingress: Listen,
    pub egress: Listen,
    pub discovery: Listen,
    /// The local peering service the discovery port forwards to, `HOST:PORT`.
    pub discovery_upstream: Option<String>,
    pub tunnel: Transport,
    /// How often the egress probes the peer's ingress; zero turns probing off.
    pub probe_interval: Duration,
    /// The admin endpoint (`/healthz/live`, `/healthz/ready`, `/metrics`; `/status` to loopback
    /// callers).
    pub admin: Option<SocketAddr>,
}

/// Why the gateways could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("mesh {mesh} has no ServiceMeshPeer {peer:?}; peers: {known}")]
    NoPeer {
        mesh: String,
        peer: String,
        known: String,
    },
    #[error(
        "mesh {mesh} declares no {what} for gateway {name:?}: add it under spec.gateways or pass {flag} ADDR"
    )]
    NotDeclared {
        mesh: String,
        what: &'static str,
        name: String,
        flag: &'static str,
    },
    #[error(
        "no trust bundle for {trust_domain} in {}: import one (`meshfed trust bundle import`) or accept a peering token",
        dir.display()
    )]
    NoPeerBundle { trust_domain: String, dir: PathBuf },
    #[error("--egress needs --peer-mesh (what the peer exports to us)")]
    NoPeerMesh,
    #[error("the peer mesh file is for {found}, but ServiceMeshPeer {peer} is {expected}")]
    PeerMeshMismatch {
        found: String,
        peer: String,
        expected: String,
    },
    #[error("mesh {peer_mesh} has no ServiceMeshPeer for {us}: it exports nothing to us")]
    NotPeered { peer_mesh: String, us: String },
    #[error("ServiceMeshPeer {0} has no spec.remote.addresses")]
    NoRemoteAddress(String),
    #[error("resolving {0}")]
    Resolve(String),
    #[error("an identity: {0}")]
    Identity(#[from] meshfed_core::id::SpiffeIdError),
    #[error("issuing a gateway certificate: {0}")]
    Issue(#[from] meshfed_trust::ca::CaError),
    #[error("TLS set-up: {0}")]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Relay(#[from] relay::GatewayError),
    #[error("{}: {detail}", path.display())]
    ResetKey { path: PathBuf, detail: String },
    #[error("the bootstrap file: {0}")]
    Bootstrap(#[from] meshfed_trust::bootstrap::BootstrapError),
    #[error("the control plane's identity {0} names no namespace")]
    NoNamespace(String),
    #[error("joining the control plane: {0}")]
    Join(#[from] SidecarError),
    #[error("the control plane client: {0}")]
    Client(#[from] meshfed_control::client::ClientError),
    #[error(
        "the control plane sent no gateway configuration: is this gateway declared under spec.gateways?"
    )]
    NoGatewayConfig,
    #[error("the control-plane subscription ended")]
    SubscriptionEnded,
    #[error("pass --ingress [ADDR], --egress [ADDR], --discovery [ADDR], or several")]
    NothingToServe,
    #[error(transparent)]
    Admin(#[from] meshfed_proxy::admin::AdminError),
}

impl GatewayError {
    /// A stable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::File(e) => e.reason(),
            Self::NoPeer { .. } => "UnknownPeer",
            Self::NotDeclared { .. } => "GatewayNotDeclared",
            Self::NoPeerBundle { .. } => "NoPeerBundle",
            Self::NoPeerMesh => "NoPeerMesh",
            Self::PeerMeshMismatch { .. } => "PeerMeshMismatch",
            Self::NotPeered { .. } => "NotPeered",
            Self::NoRemoteAddress(_) => "NoRemoteAddress",
            Self::Resolve(_) => "AddressUnresolved",
            Self::Identity(e) => e.reason(),
            Self::Issue(e) => e.reason(),
            Self::Tls(_) => "TlsSetupFailed",
            Self::Relay(_) => "GatewayStartFailed",
            Self::ResetKey { .. } => "ResetKeyUnusable",
            Self::Bootstrap(_) => "InvalidBootstrap",
            Self::NoNamespace(_) => "NoNamespace",
            Self::Join(e) => e.reason(),
            Self::Client(_) => "ClientSetupFailed",
            Self::NoGatewayConfig => "NoGatewayConfig",
            Self::SubscriptionEnded => "SubscriptionEnded",
            Self::NothingToServe => "NothingToServe",
            Self::Admin(_) => "AdminFailed",
        }
    }
}

/// The running gateways.
#[derive(Debug)]
pub struct Gateways {
    running: Vec<relay::Gateway>,
    admin: Option<SocketAddr>,
    tasks: Tasks,
    span: tracing::Span,
}

impl Gateways {
    /// Starts the gateways `opts` asks for.
    pub async fn build(opts: GatewayOptions) -> Result<Self, GatewayError> {
        if opts.ingress.is_none() && opts.egress.is_none() && opts.discovery.is_none() {
            return Err(GatewayError::NothingToServe);
        }
        let span = tracing::info_span!("component", component = %"gateway", peer = %opts.peer);
        let tasks = Tasks::new();
        // One set of metric families for every gateway of this process.
        let metrics = GatewayMetrics::new();
        let (running, roles) = async {
            match &opts.mode {
                GatewayMode::File { mesh, peer_mesh } => {
                    start_file(&opts, mesh, peer_mesh.as_deref(), &metrics).await
                }
                GatewayMode::Joined {
                    bootstrap,
                    ingress_name,
                    egress_name,
                } => {
                    let names = (
                        ingress_name
                            .clone()
                            .unwrap_or_else(|| format!("ingress-{}", opts.peer)),
                        egress_name
                            .clone()
                            .unwrap_or_else(|| format!("egress-{}", opts.peer)),
                    );
                    start_joined(&opts, bootstrap, names, &tasks, &metrics).await
                }
            }
        }
        .instrument(span.clone())
        .await?;
        let admin = match opts.admin {
            Some(addr) => Some(
                serve_admin(addr, &running, &roles, &tasks, metrics.clone())
                    .instrument(span.clone())
                    .await?,
            ),
            None => None,
        };
        Ok(Self {
            running,
            admin,
            tasks,
            span,
        })
    }

    /// The admin endpoint, when asked for.
    pub fn admin(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Waits until one of the gateways' tasks ends on its own.
    pub async fn failed(&self) -> TaskFailure {
        self.tasks.failed().await
    }

    /// Stops accepting at once, lets connections in flight finish for up to `deadline`, then
    /// stops everything; the connections still open at the deadline.
    pub async fn drain(self, deadline: Duration) -> u64 {
        let span = self.span.clone();
        async move {
            tracing::info!(
                "draining: no new connections; waiting up to {deadline:?} for those in flight"
            );
            let tasks: Vec<_> = self
                .running
                .into_iter()
                .map(|g| tokio::spawn(g.drain(deadline)))
                .collect();
            let mut left = 0;
            for t in tasks {
                left += t.await.unwrap_or(0);
            }
            self.tasks.shutdown(Duration::from_secs(1)).await;
            tracing::info!("drained; {left} connection(s) cut at the deadline");
            left
        }
        .instrument(span)
        .await
    }
}

/// Serves `/status` (per gateway role, loopback callers only), `/metrics` and the health
/// paths on `addr`.
async fn serve_admin(
    addr: SocketAddr,
    running: &[relay::Gateway],
    roles: &[&'static str],
    tasks: &Tasks,
    metrics: Arc<GatewayMetrics>,
) -> Result<SocketAddr, GatewayError> {
    let views: Vec<(&'static str, Arc<relay::GatewayStats>)> = roles
        .iter()
        .copied()
        .zip(running.iter().map(|g| g.stats.clone()))
        .collect();
    let mut admin = meshfed_proxy::admin::Admin::default();
    admin.pages.insert(
        "/status",
        meshfed_proxy::admin::Page::status(move || {
            let body: serde_json::Map<String, serde_json::Value> = views
                .iter()
                .map(|(role, st)| ((*role).to_owned(), st.to_json()))
                .collect();
            serde_json::Value::Object(body).to_string()
        }),
    );
    admin.pages.insert(
        "/metrics",
        meshfed_proxy::admin::Page::metrics(move || metrics.encode()),
    );
    let (bound, task) = meshfed_proxy::admin::serve(addr, admin).await?;
    tasks.adopt("admin", task);
    tracing::info!("admin on http://{bound}/status");
    Ok(bound)
}

/// What `peer` may reach through our ingress: exported name → the local service's endpoints.
fn ingress_peer(mesh: &MeshFederation, peer: &Peer) -> IngressPeer {
    IngressPeer {
        name: peer.name.to_string(),
        client_id: peer.client_id.clone(),
        exports: mesh.ingress_exports(peer),
    }
}

async fn resolve(host_port: &str) -> Result<SocketAddr, GatewayError> {
    tokio::net::lookup_host(host_port)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| GatewayError::Resolve(host_port.to_owned()))
}

/// Where our egress sends each name `peer_mesh` exports to us.
async fn egress_routes(
    mesh: &MeshFederation,
    peer: &Peer,
    peer_mesh: &MeshFederation,
) -> Result<BTreeMap<Hostname, EgressRoute>, GatewayError> {
    if peer_mesh.trust_domain != peer.trust_domain {
        return Err(GatewayError::PeerMeshMismatch {
            found: peer_mesh.trust_domain.to_string(),
            peer: peer.name.to_string(),
            expected: peer.trust_domain.to_string(),
        });
    }
    let Some(us) = peer_mesh.peer_for(&mesh.trust_domain) else {
        return Err(GatewayError::NotPeered {
            peer_mesh: peer_mesh.mesh.to_string(),
            us: mesh.trust_domain.to_string(),
        });
    };
    let ingress_id = peer_mesh.ingress_identity(us)?;
    let host = peer
        .addresses
        .first()
        .ok_or_else(|| GatewayError::NoRemoteAddress(peer.name.to_string()))?;
    let ingress = resolve(&format!("{host}:{}", peer.service_port)).await?;
    Ok(peer_mesh
        .exports_to(mesh)
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            (
                r.exported_name,
                EgressRoute {
                    peer: peer.name.to_string(),
                    ingress,
                    ingress_id: PeerIdentity::Id(ingress_id.clone()),
                },
            )
        })
        .collect())
}

/// `listen`'s address: given, or the one the mesh declares (`declared`).
fn address(
    listen: &Listen,
    declared: Option<SocketAddr>,
    not_declared: impl FnOnce() -> GatewayError,
) -> Result<Option<SocketAddr>, GatewayError> {
    Ok(match listen {
        None => None,
        Some(Some(a)) => Some(*a),
        Some(None) => Some(declared.ok_or_else(not_declared)?),
    })
}

fn names(of: impl Iterator<Item = String>) -> String {
    let all: Vec<String> = of.collect();
    if all.is_empty() {
        "nothing".into()
    } else {
        all.join(", ")
    }
}

async fn start_file(
    opts: &GatewayOptions,
    mesh_path: &Path,
    peer_mesh: Option<&Path>,
    metrics: &Arc<GatewayMetrics>,
) -> Result<(Vec<relay::Gateway>, Vec<&'static str>), GatewayError> {
    let mesh = files::load_mesh(mesh_path)?;
    let Some(peer) = mesh.peers.values().find(|p| p.name.as_str() == opts.peer) else {
        return Err(GatewayError::NoPeer {
            mesh: mesh.mesh.to_string(),
            peer: opts.peer.clone(),
            known: names(mesh.peers.keys().map(ToString::to_string)),
        });
    };
    let declared = |what, name: &str, flag| GatewayError::NotDeclared {
        mesh: mesh.mesh.to_string(),
        what,
        name: name.to_owned(),
        flag,
    };
    let ingress_addr = address(
        &opts.ingress,
        mesh.ingress_address(peer).map(|g| g.address),
        || declared("ingress gateway", &peer.ingress_gateway, "--ingress"),
    )?;
    let egress_addr = address(&opts.egress, mesh.egress_address(peer), || {
        declared("egress gateway", &peer.egress_gateway, "--egress")
    })?;
    let discovery_addr = address(
        &opts.discovery,
        mesh.ingress_address(peer).and_then(|g| g.discovery),
        || declared("discoveryAddress", &peer.ingress_gateway, "--discovery"),
    )?;
    let (ca, held) = files::load_ca_for(&opts.dir, &mesh)?;
    if held.get(&peer.trust_domain).is_none() {
        return Err(GatewayError::NoPeerBundle {
            trust_domain: peer.trust_domain.to_string(),
            dir: opts.dir.clone(),
        });
    }
    let bundles = verify::shared(held);
    let issue = |id| -> Result<Arc<SvidResolver>, GatewayError> {
        let svid = ca.issue(&id, DEFAULT_SVID_TTL, SystemTime::now())?;
        Ok(Arc::new(SvidResolver::new(&svid, verify::provider())?))
    };
    let mut running = Vec::new();
    let mut roles = Vec::new();
    if let Some(addr) = ingress_addr {
        let ip = ingress_peer(&mesh, peer);
        let serves = names(ip.exports.keys().map(ToString::to_string));
        let g = relay::start_ingress(
            addr,
            Arc::new(RwLock::new(Arc::new(vec![ip]))),
            issue(mesh.ingress_identity(peer)?)?,
            bundles.clone(),
            IngressOptions {
                quic: true,
                reset_key: Some(reset_key(&opts.dir)?),
                metrics: metrics.clone(),
            },
        )
        .await?;
        tracing::info!(
            "ingress for {} on {}: accepts {} and serves {serves}",
            peer.name,
            g.addr,
            peer.client_id,
        );
        running.push(g);
        roles.push("ingress");
    }
    if let Some(addr) = egress_addr {
        let path = peer_mesh.ok_or(GatewayError::NoPeerMesh)?;
        let peer_mesh = files::load_mesh(path)?;
        let routes = egress_routes(&mesh, peer, &peer_mesh).await?;
        let carries = names(routes.keys().map(ToString::to_string));
        let g = relay::start_egress(
            addr,
            Arc::new(RwLock::new(Arc::new(routes))),
            issue(mesh.egress_identity(peer)?)?,
            bundles.clone(),
            egress_options(opts, metrics),
        )
        .await?;
        tracing::info!(
            "egress to {} on {} ({} tunnel): carries {carries}",
            peer.name,
            g.addr,
            opts.tunnel,
        );
        running.push(g);
        roles.push("egress");
    }
    if let (Some(addr), Some(upstream)) = (discovery_addr, &opts.discovery_upstream) {
        running.push(start_discovery(addr, upstream, metrics).await?);
        roles.push("discovery");
    }
    Ok((running, roles))
}

fn egress_options(opts: &GatewayOptions, metrics: &Arc<GatewayMetrics>) -> EgressOptions {
    EgressOptions {
        transport: opts.tunnel,
        probe_interval: (!opts.probe_interval.is_zero()).then_some(opts.probe_interval),
        metrics: metrics.clone(),
    }
}

async fn start_discovery(
    addr: SocketAddr,
    upstream: &str,
    metrics: &Arc<GatewayMetrics>,
) -> Result<relay::Gateway, GatewayError> {
    let upstream = resolve(upstream).await?;
    let g = relay::start_discovery(addr, upstream, metrics).await?;
    tracing::info!(
        "discovery port on {}: forwards to the peering service at {upstream}",
        g.addr
    );
    Ok(g)
}

/// The ingress's QUIC stateless-reset key, kept at `DIR/quic-reset.key` (mode 0600) so a
/// restarted ingress can tell peers' egresses at once that their old connection is gone.
fn reset_key(dir: &Path) -> Result<[u8; 32], GatewayError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("quic-reset.key");
    let fail = |detail: String| GatewayError::ResetKey {
        path: path.clone(),
        detail,
    };
    match std::fs::read(&path) {
        Ok(bytes) => bytes.as_slice().try_into().map_err(|_| {
            fail(format!(
                "a QUIC reset key is 32 bytes, this file has {}; delete it to make a new one",
                bytes.len()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = meshfed_gateway::tunnel::new_reset_key().map_err(|e| fail(e.to_string()))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| fail(format!("creating: {e}")))?;
            f.write_all(&key)
                .map_err(|e| fail(format!("writing: {e}")))?;
            Ok(key)
        }
        Err(e) => Err(fail(format!("reading: {e}"))),
    }
}

/// The namespace in a control plane's SPIFFE ID (`spiffe://td/ns/NS/sa/…`): the mesh's
/// control-plane namespace, where its gateways run.
fn control_namespace(id: &meshfed_core::SpiffeId) -> Result<String, GatewayError> {
    let parts: Vec<&str> = id.path().split('/').collect();
    match parts.as_slice() {
        ["", "ns", ns, "sa", _] => Ok((*ns).to_owned()),
        _ => Err(GatewayError::NoNamespace(id.to_string())),
    }
}

/// Joins the control plane as `name` in `namespace`: a first certificate (retried while the
/// control plane starts), renewed at half life and after root rotations — following
/// `sibling_of`'s subscription if given (one subscription serves the whole gateway).
async fn join(
    boot: &Bootstrap,
    namespace: &str,
    name: &str,
    sibling_of: Option<&Client>,
    tasks: &Tasks,
) -> Result<(Client, Arc<SvidResolver>), GatewayError> {
    let client = match sibling_of {
        Some(c) => c.sibling(name),
        None => Client::new(boot.clone(), namespace, name)?,
    };
    let svid = certify_first(&client, boot.control_plane).await?;
    let resolver = Arc::new(SvidResolver::new(&svid, verify::provider())?);
    tracing::info!("certified as {} by {}", svid.id, boot.control_plane);
    {
        let (client, resolver) = (client.clone(), resolver.clone());
        tasks.spawn_infallible("renew", async move {
            client.renew_forever(resolver, svid).await;
        });
    }
    Ok((client, resolver))
}

/// The ingress's view of `peer` in a gateway plan.
fn plan_ingress(plan: &GatewayPlan, peer: &str) -> Vec<IngressPeer> {
    plan.ingress
        .iter()
        .filter(|g| g.peer.as_str() == peer)
        .map(|g| IngressPeer {
            name: g.peer.to_string(),
            client_id: g.client_id.clone(),
            exports: g.exports.clone(),
        })
        .collect()
}

/// The egress's routes to `peer` in a gateway plan (peer ingress addresses resolved).
async fn plan_egress(
    plan: &GatewayPlan,
    peer: &str,
) -> Result<BTreeMap<Hostname, EgressRoute>, GatewayError> {
    let mut routes = BTreeMap::new();
    for t in plan.egress.iter().filter(|t| t.peer.as_str() == peer) {
        let ingress = resolve(&t.ingress).await?;
        routes.insert(
            t.exported_name.clone(),
            EgressRoute {
                peer: t.peer.to_string(),
                ingress,
                ingress_id: PeerIdentity::Domain(t.trust_domain.clone()),
            },
        );
    }
    Ok(routes)
}

/// What the joined gateways serve for one peer, replaced by each snapshot.
struct Served {
    peer: String,
    ingress_peers: Arc<RwLock<Arc<Vec<IngressPeer>>>>,
    egress_routes: Arc<RwLock<Arc<BTreeMap<Hostname, EgressRoute>>>>,
    bundles: verify::SharedBundles,
}

impl Served {
    /// Takes a snapshot's gateway plan and bundles; nothing changes when it does not apply.
    async fn apply(&self, received: &Received) -> Result<(), GatewayError> {
        let plan = received
            .gateway
            .as_ref()
            .ok_or(GatewayError::NoGatewayConfig)?;
        let routes = plan_egress(plan, &self.peer).await?;
        self.bundles.store(Arc::new(received.bundles.clone()));
        *self
            .ingress_peers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Arc::new(plan_ingress(plan, &self.peer));
        *self
            .egress_routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(routes);
        Ok(())
    }
}

/// Says whether a snapshot was applied and answers the stream (ACK or NACK); the result when
/// it was.
fn answer<T>(update: Update, r: Result<T, GatewayError>) -> Option<T> {
    let version = update.received.version;
    match r {
        Ok(x) => {
            tracing::info!("applied config version {version}");
            let _ = update.done.send(Ok(()));
            Some(x)
        }
        Err(e) => {
            tracing::warn!(reason = e.reason(), "refused config version {version}: {e}");
            let _ = update.done.send(Err(SnapshotRefused::apply_failed(e)));
            None
        }
    }
}

/// Joined to the control plane: the ingress and egress certify as their gateways'
/// identities, then follow the configuration stream; the first good snapshot starts the
/// listeners.
async fn start_joined(
    opts: &GatewayOptions,
    path: &Path,
    (ingress_name, egress_name): (String, String),
    tasks: &Tasks,
    metrics: &Arc<GatewayMetrics>,
) -> Result<(Vec<relay::Gateway>, Vec<&'static str>), GatewayError> {
    let boot = Bootstrap::read(path)?;
    let namespace = control_namespace(&boot.control_plane_id)?;
    let peer = opts.peer.clone();
    let serve_ingress = opts.ingress.is_some() || opts.discovery.is_some();
    let ingress_id = match serve_ingress {
        true => Some(join(&boot, &namespace, &ingress_name, None, tasks).await?),
        false => None,
    };
    let egress_id = match opts.egress.is_some() {
        true => Some(
            join(
                &boot,
                &namespace,
                &egress_name,
                ingress_id.as_ref().map(|(c, _)| c),
                tasks,
            )
            .await?,
        ),
        false => None,
    };
    // One subscription carries the whole gateway configuration.
    let Some((client, resolver)) = ingress_id.clone().or_else(|| egress_id.clone()) else {
        return Err(GatewayError::NothingToServe);
    };
    let bundles = client.bundles();
    // The egress's probe results go to the control plane on the config stream.
    let (reports_tx, reports_rx) = watch::channel(meshfed_api::config::Report::default());
    let client = client.with_reports(reports_rx);
    let (updates, mut rx) = mpsc::channel::<Update>(1);
    let (state, _) = watch::channel(ClientState::default());
    tasks.spawn_finite("config-stream", {
        let client = client.clone();
        async move { client.subscribe(resolver, updates, state).await }
    });
    let ingress_peers: Arc<RwLock<Arc<Vec<IngressPeer>>>> = Arc::default();
    let egress_routes: Arc<RwLock<Arc<BTreeMap<Hostname, EgressRoute>>>> = Arc::default();
    let served = Served {
        peer: peer.clone(),
        ingress_peers: ingress_peers.clone(),
        egress_routes: egress_routes.clone(),
        bundles: bundles.clone(),
    };
    let running = loop {
        let Some(update) = rx.recv().await else {
            return Err(GatewayError::SubscriptionEnded);
        };
        let r = async {
            let received = &update.received;
            served.apply(received).await?;
            let gateways = &received.mesh.mesh.gateways;
            let declared = |name: &str, discovery: bool| {
                gateways.get(name).and_then(|g| {
                    if discovery {
                        g.discovery
                    } else {
                        Some(g.address)
                    }
                })
            };
            let not_declared = |what, name: &str, flag| {
                let mesh = received.mesh.mesh.mesh.to_string();
                let name = name.to_owned();
                move || GatewayError::NotDeclared {
                    mesh,
                    what,
                    name,
                    flag,
                }
            };
            let ingress_addr = address(
                &opts.ingress,
                declared(&ingress_name, false),
                not_declared("address", &ingress_name, "--ingress"),
            )?;
            let egress_addr = address(
                &opts.egress,
                declared(&egress_name, false),
                not_declared("address", &egress_name, "--egress"),
            )?;
            let discovery_addr = address(
                &opts.discovery,
                declared(&ingress_name, true),
                not_declared("discoveryAddress", &ingress_name, "--discovery"),
            )?;
            let mut running = Vec::new();
            let mut roles = Vec::new();
            if let (Some(a), Some((_, svid))) = (ingress_addr, &ingress_id) {
                let g = relay::start_ingress(
                    a,
                    ingress_peers.clone(),
                    svid.clone(),
                    bundles.clone(),
                    IngressOptions {
                        quic: true,
                        reset_key: Some(reset_key(&opts.dir)?),
                        metrics: metrics.clone(),
                    },
                )
                .await?;
                tracing::info!("ingress for {peer} on {}", g.addr);
                running.push(g);
                roles.push("ingress");
            }
            if let (Some(a), Some((_, svid))) = (egress_addr, &egress_id) {
                let g = relay::start_egress(
                    a,
                    egress_routes.clone(),
                    svid.clone(),
                    bundles.clone(),
                    egress_options(opts, metrics),
                )
                .await?;
                tracing::info!("egress to {peer} on {} ({} tunnel)", g.addr, opts.tunnel);
                tasks.spawn_finite(
                    "reachability",
                    report_reachability(g.stats.clone(), reports_tx.clone()),
                );
                running.push(g);
                roles.push("egress");
            }
            if let (Some(a), Some(upstream)) = (discovery_addr, &opts.discovery_upstream) {
                running.push(start_discovery(a, upstream, metrics).await?);
                roles.push("discovery");
            }
            Ok((running, roles))
        }
        .await;
        if let Some(x) = answer(update, r) {
            break x;
        }
    };
    // Later snapshots update what the gateways serve, live.
    tasks.spawn_finite(
        "follow-config",
        async move {
            while let Some(update) = rx.recv().await {
                let r = served.apply(&update.received).await;
                answer(update, r);
            }
        }
        .in_current_span(),
    );
    Ok(running)
}

/// Publishes the egress's probe results whenever a peer's reachability changes (and the RTT
/// with them, refreshed at least every 30 s), for the control plane.
async fn report_reachability(
    stats: Arc<relay::GatewayStats>,
    tx: watch::Sender<meshfed_api::config::Report>,
) {
    let mut last_sent = std::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now: Vec<meshfed_api::config::PeerReachability> = stats
            .peer_names()
            .into_iter()
            .filter_map(|name| {
                let p = stats.peer(&name).probe()?;
                Some(meshfed_api::config::PeerReachability {
                    peer: name,
                    reachable: p.error.is_none(),
                    rtt_us: p
                        .rtt
                        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
                    error: p.error.unwrap_or_default(),
                })
            })
            .collect();
        let stale = last_sent.elapsed() > Duration::from_secs(30);
        let changed = tx.send_if_modified(|report| {
            let cur = &mut report.peers;
            let same = cur.len() == now.len()
                && cur.iter().zip(&now).all(|(a, b)| {
                    a.peer == b.peer && a.reachable == b.reachable && a.error == b.error
                });
            if same && !stale {
                return false;
            }
            cur.clone_from(&now);
            true
        });
        if changed {
            last_sent = std::time::Instant::now();
        }
        if tx.is_closed() {
            return;
        }
    }
}
