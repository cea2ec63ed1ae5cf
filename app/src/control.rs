//! The mesh's control plane as a running component: the config source (a mesh file, or the
//! cluster in Kubernetes mode), the mesh CA across root rotations, the config and certificate
//! stream to proxies, the bootstrap file they join with, the peering node when asked for, and
//! in Kubernetes mode leader election, CRD status, Events, finalizers and bootstrap Secrets.
//!
//! [`Control::build`] binds its sockets and starts everything; the handle owns every task it
//! started ([`Tasks`]), stops them on [`Control::stop`], and reports one that ended on its own
//! ([`Control::failed`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use meshfed_control::control_plane_id;
use meshfed_control::imports::{PeerFeed, serve_with_imports};
use meshfed_control::rotation::{self, MeshCa};
use meshfed_control::server::{
    self, AdminStatus, ControlPlane, ControlStatus, Enrolment, StatusCell,
};
use meshfed_control::source::{self, Trust, TrustFn};
use meshfed_core::TrustDomain;
use meshfed_peering::tls;
use meshfed_trust::bootstrap::Bootstrap;
use meshfed_trust::ca::{CertificateAuthority, DEFAULT_SVID_TTL};
use meshfed_trust::join::JoinStore;
use meshfed_trust::verify::{self, SvidResolver};
use tokio::sync::watch;
use tracing::Instrument;

use crate::node::{Node, NodeConfig, NodeError};
use crate::tasks::{TaskFailure, Tasks};

/// Where the control plane's configuration comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A mesh file, re-read when it changes.
    File(PathBuf),
    /// The cluster: Services, EndpointSlices, injected Pods and Nodes cluster-wide, the
    /// federation CRDs in the control-plane namespace.
    Kube(KubeOptions),
}

/// Kubernetes mode's settings.
#[derive(Debug, Clone, Default)]
pub struct KubeOptions {
    /// The control-plane namespace (default: `$POD_NAMESPACE`, else `meshfed-system`).
    pub namespace: Option<String>,
    /// The mesh's name (default: the namespace without `-system`).
    pub mesh_name: Option<String>,
    /// The cluster's DNS domain.
    pub cluster_domain: Option<String>,
}

/// The peering node's settings, when the control plane runs one.
#[derive(Debug, Clone)]
pub struct PeeringOptions {
    pub listen: SocketAddr,
    pub store: Option<PathBuf>,
    pub heartbeat: Duration,
    pub liveness: Duration,
}

/// What a control plane is built from.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub source: Source,
    /// The mesh CA's folder.
    pub dir: PathBuf,
    /// The config and certificate endpoint (mTLS).
    pub listen: SocketAddr,
    /// Where proxies reach it, `HOST:PORT` (default: `listen`).
    pub advertise: Option<String>,
    /// The admin endpoint (`/healthz/live`, `/healthz/ready`; `/status` to loopback callers).
    pub admin: Option<SocketAddr>,
    /// Where the bootstrap file goes (default: `bootstrap.json` in `dir`).
    pub bootstrap_out: Option<PathBuf>,
    pub svid_ttl: Duration,
    pub peering: Option<PeeringOptions>,
    /// How long a new root is trusted before it signs.
    pub rotation_grace: Duration,
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("loading the CA in {dir}: {source}")]
    Ca {
        dir: PathBuf,
        source: meshfed_trust::ca::CaError,
    },
    #[error("the trust bundles in {dir}: {source}")]
    Bundles {
        dir: PathBuf,
        source: meshfed_trust::dir::DirError,
    },
    #[error("the mesh CA's bundle: {0}")]
    Bundle(#[from] meshfed_trust::bundle::BundleError),
    #[error("the configuration: {0}")]
    Config(#[from] source::SourceError),
    #[error("no configuration source")]
    NoSource,
    #[error("encoding the bootstrap file: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the cluster (KUBECONFIG or the pod's service account): {0}")]
    Kube(#[from] meshfed_k8s::KubeError),
    #[error("the control plane's identity: {0}")]
    Identity(#[from] meshfed_core::id::SpiffeIdError),
    #[error("issuing the control plane's certificate: {0}")]
    Issue(#[from] meshfed_trust::ca::CaError),
    #[error("TLS set-up: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS set-up: {0}")]
    TlsSetup(#[from] server::TlsSetupError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("resolving {0} (HOST:PORT)")]
    Advertise(String),
    #[error("the bootstrap file: {0}")]
    Bootstrap(#[from] meshfed_trust::bootstrap::BootstrapError),
    #[error(transparent)]
    Admin(#[from] meshfed_proxy::admin::AdminError),
    #[error("the peering node: {0}")]
    Node(#[from] NodeError),
}

impl ControlError {
    /// A stable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Ca { source, .. } | Self::Issue(source) => source.reason(),
            Self::Bundles { source, .. } => source.reason(),
            Self::Bundle(e) => e.reason(),
            Self::Config(e) => e.reason(),
            Self::NoSource => "NoSource",
            Self::Encode(_) => "EncodeFailed",
            Self::Kube(e) => e.reason(),
            Self::Identity(e) => e.reason(),
            Self::Tls(_) | Self::TlsSetup(_) => "TlsSetupFailed",
            Self::Bind { .. } => "BindFailed",
            Self::Advertise(_) => "AdvertiseUnresolved",
            Self::Bootstrap(_) => "BootstrapWriteFailed",
            Self::Admin(_) => "AdminFailed",
            Self::Node(e) => e.reason(),
        }
    }
}

/// How long the first lists of the cluster may take.
const FIRST_LIST: Duration = Duration::from_secs(60);

/// A running control plane.
pub struct Control {
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    bootstrap: PathBuf,
    status: StatusCell,
    node: Option<Arc<Node>>,
    /// Kubernetes mode: this replica's Lease campaign, released when it stops.
    campaign: Mutex<Option<meshfed_k8s::lease::Campaign>>,
    tasks: Tasks,
    span: tracing::Span,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("listen", &self.listen)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

/// The trust the snapshots carry: every bundle held in `dir`, plus in Kubernetes mode the
/// roots the ServiceMeshPeers' ConfigMaps name.
fn trust_fn(
    dir: PathBuf,
    mesh_ca: Arc<MeshCa>,
    rendered: Option<watch::Receiver<Arc<meshfed_k8s::render::Rendered>>>,
) -> TrustFn {
    Arc::new(move || {
        let mut set = meshfed_trust::dir::load_bundles(&dir, &mesh_ca.trusted())?;
        if let Some(r) = &rendered {
            meshfed_k8s::render::add_peer_trust(&mut set, &r.borrow());
        }
        Ok(Trust {
            bundles: set
                .domains()
                .filter_map(|d| set.get(d).map(|b| (d.clone(), b.to_json().to_string())))
                .collect(),
            signing_root: mesh_ca.signing_root(),
        })
    })
}

/// Connects (KUBECONFIG, else in-cluster) and starts the reflectors.
async fn start_kube(
    opts: &KubeOptions,
    td: &TrustDomain,
) -> Result<(meshfed_k8s::source::KubeSource, meshfed_k8s::Client), ControlError> {
    let client = meshfed_k8s::connect()
        .await
        .map_err(meshfed_k8s::KubeError::from)?;
    let namespace = opts
        .namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "meshfed-system".to_owned());
    let mesh = opts.mesh_name.clone().unwrap_or_else(|| {
        namespace
            .strip_suffix("-system")
            .unwrap_or(&namespace)
            .to_owned()
    });
    let settings = meshfed_k8s::render::Settings {
        mesh,
        namespace,
        trust_domain: td.to_string(),
        cluster_domain: opts.cluster_domain.clone(),
    };
    let source = meshfed_k8s::source::KubeSource::start(&client, settings, FIRST_LIST).await?;
    Ok((source, client))
}

impl Control {
    /// Loads the CA, reads the first configuration, binds the config endpoint (and the
    /// peering and admin endpoints when asked), writes the bootstrap file and starts serving.
    pub async fn build(config: ControlConfig) -> Result<Self, ControlError> {
        let span = tracing::info_span!(
            "component",
            component = %"control",
            mesh = tracing::field::Empty
        );
        Self::build_in(config, span.clone()).instrument(span).await
    }

    #[allow(clippy::too_many_lines)]
    async fn build_in(config: ControlConfig, span: tracing::Span) -> Result<Self, ControlError> {
        let tasks = Tasks::new();
        let dir = config.dir.clone();
        let ca = CertificateAuthority::load(&dir).map_err(|source| ControlError::Ca {
            dir: dir.clone(),
            source,
        })?;
        let mesh_ca = MeshCa::new(ca)?;
        let td = mesh_ca.trusted().trust_domain().clone();
        let (file, kube) = match &config.source {
            Source::File(path) => (Some(path.clone()), None),
            Source::Kube(opts) => (None, Some(start_kube(opts, &td).await?)),
        };
        // In Kubernetes mode, peers' roots also come from the ConfigMaps their
        // ServiceMeshPeers name (Maistra's certificateChain).
        let rendered = kube.as_ref().map(|(s, _)| s.rendered.subscribe());
        let trust = trust_fn(dir.clone(), mesh_ca.clone(), rendered.clone());
        let first = match (&kube, &file) {
            (Some((source, _)), _) => source.initial(&td, &trust)?,
            (None, Some(path)) => source::initial(path, &td, &trust)?,
            (None, None) => return Err(ControlError::NoSource),
        };
        span.record("mesh", tracing::field::display(&first.mesh.mesh));
        let cp_id = control_plane_id(&first.mesh)?;
        let svid = mesh_ca
            .signing()
            .issue(&cp_id, DEFAULT_SVID_TTL, SystemTime::now())?;
        let resolver = Arc::new(SvidResolver::new(&svid, verify::provider())?);
        let server_tls = Arc::new(server::tls_config(
            &td,
            mesh_ca.own_bundles(),
            resolver.clone(),
        )?);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ControlError::Bind {
                addr: config.listen,
                source,
            })?;
        let listen = listener.local_addr().map_err(|source| ControlError::Bind {
            addr: config.listen,
            source,
        })?;
        // Embedded mode: each workload joins with its own credential, minted into the CA
        // folder (`meshfed join create`); the bootstrap file written here is the template.
        // Kubernetes mode: each pod presents its projected ServiceAccount token, which the
        // cluster reviews; the bootstrap Secrets hold no secret, only where the token is.
        let (token_file, enrolment) = match &kube {
            None => (None, Enrolment::Join(JoinStore::new(&dir))),
            Some((_, client)) => (
                Some(PathBuf::from(meshfed_k8s::token_review::TOKEN_FILE)),
                Enrolment::ServiceAccount(Arc::new(
                    meshfed_k8s::token_review::KubeTokenReviewer::new(client.clone()),
                )),
            ),
        };
        let advertised = match &config.advertise {
            Some(a) => tokio::net::lookup_host(a.as_str())
                .await
                .ok()
                .and_then(|mut it| it.next())
                .ok_or_else(|| ControlError::Advertise(a.clone()))?,
            None => listen,
        };
        let boot = Bootstrap {
            control_plane: advertised,
            control_plane_id: cp_id.clone(),
            trust_domain: td.clone(),
            bundle: mesh_ca.trusted().current_bundle()?.to_json(),
            token: String::new(),
            token_file,
        };
        let boot_path = config
            .bootstrap_out
            .clone()
            .unwrap_or_else(|| dir.join("bootstrap.json"));
        boot.write(&boot_path)?;
        // The bootstrap file as JSON, for the Secrets Kubernetes mode writes.
        let boot_json = Arc::new(watch::channel(serde_json::to_string(&boot)?).0);
        let status = StatusCell::default();
        let version = first.version;
        // This replica's name: its Lease identity, and the stream it imports each peer on.
        let replica = std::env::var("POD_NAME")
            .ok()
            .filter(|n| meshfed_peering::server::valid_replica(n) && !n.is_empty())
            .unwrap_or_else(|| format!("meshfed-control-{}", std::process::id()));
        // The peering node, if asked for: its importers feed the served snapshots.
        let node = match &config.peering {
            None => None,
            Some(p) => {
                let mut held = meshfed_trust::dir::load_bundles(&dir, &mesh_ca.trusted()).map_err(
                    |source| ControlError::Bundles {
                        dir: dir.clone(),
                        source,
                    },
                )?;
                if let Some(r) = &rendered {
                    meshfed_k8s::render::add_peer_trust(&mut held, &r.borrow());
                }
                let held = verify::shared(held);
                // ConfigMap roots that appear later are trusted by the peering streams too.
                if let Some(mut r) = rendered.clone() {
                    let held = held.clone();
                    tasks.spawn_finite("peer-roots", async move {
                        while r.changed().await.is_ok() {
                            let rendered = r.borrow_and_update().clone();
                            held.rcu(|cur| {
                                let mut next = (**cur).clone();
                                meshfed_k8s::render::add_peer_trust(&mut next, &rendered);
                                next
                            });
                        }
                    });
                }
                let issuer = mesh_ca.clone();
                let node = Node::build(NodeConfig {
                    mesh: (*first.mesh).clone(),
                    issue: Arc::new(move |id: &meshfed_core::SpiffeId| {
                        issuer
                            .signing()
                            .issue(id, DEFAULT_SVID_TTL, SystemTime::now())
                    }),
                    bundles: held,
                    listen: p.listen,
                    store: p.store.clone(),
                    heartbeat: p.heartbeat,
                    liveness: p.liveness,
                    trust_store: match &kube {
                        Some((source, client)) => {
                            Arc::new(meshfed_k8s::trust_store::KubeTrustStore::new(
                                client.clone(),
                                &source.settings.namespace,
                                td.clone(),
                            ))
                        }
                        None => Arc::new(meshfed_trust::store::DirStore::new(&dir, td.clone())),
                    },
                    replica: if kube.is_some() {
                        replica.clone()
                    } else {
                        String::new()
                    },
                })
                .await?;
                Some(Arc::new(node))
            }
        };
        let feeds = node
            .as_ref()
            .map_or_else(|| watch::channel(Vec::<PeerFeed>::new()).1, |n| n.feeds());
        let (src_tx, src_rx) = watch::channel(Arc::new(first.clone()));
        // A changed mesh file, or a workload's readiness, changes what peering exports too.
        let on_mesh = node.clone().map(|n| -> meshfed_control::imports::OnMesh {
            Arc::new(move |mesh, health| n.set_exports(mesh, health))
        });
        // The peers follow the mesh: a ServiceMeshPeer added or removed (in the file or the
        // cluster) starts or stops its importer without a restart.
        if let Some(n) = node.clone() {
            let mut rx = src_rx.clone();
            tasks.spawn_finite("follow-peers", async move {
                loop {
                    let mesh = rx.borrow_and_update().mesh.clone();
                    if let Err(e) = n.sync_peers(&mesh).await {
                        tracing::warn!(reason = e.reason(), "following the mesh's peers: {e}");
                    }
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            });
        }
        let (tx, rx) = watch::channel(Arc::new(first));
        let mut campaign = None;
        let source_name = match (file, kube) {
            (Some(path), _) => {
                tasks.spawn_infallible(
                    "mesh-file",
                    source::watch_file(
                        path.clone(),
                        td.clone(),
                        trust,
                        src_tx,
                        status.clone(),
                        Duration::from_millis(500),
                    ),
                );
                path.display().to_string()
            }
            (None, Some((source, client))) => {
                // Every replica serves proxies; the Lease holder writes status, Events and
                // the bootstrap Secrets.
                let identity = replica;
                let started = meshfed_k8s::lease::start(
                    &client,
                    &source.settings.namespace,
                    meshfed_k8s::lease::Election::new(&identity),
                );
                let leader = started.leader();
                campaign = Some(started);
                let cleanup: meshfed_k8s::finalizer::Cleanup = {
                    let node = node.clone();
                    Arc::new(move |peer: String| {
                        let node = node.clone();
                        Box::pin(async move {
                            match &node {
                                Some(n) => n.forget_peer(&peer).await.map_err(Into::into),
                                None => Ok(()),
                            }
                        })
                    })
                };
                tasks.spawn_finite(
                    "finalizer",
                    meshfed_k8s::finalizer::run(
                        client.clone(),
                        source.settings.namespace.clone(),
                        source.rendered.subscribe(),
                        leader.clone(),
                        cleanup,
                    ),
                );
                tasks.spawn_finite(
                    "bootstrap-secrets",
                    source.bootstrap_writer(client.clone(), boot_json.subscribe(), leader.clone()),
                );
                tasks.spawn_finite(
                    "crd-status",
                    meshfed_k8s::status::run(
                        client,
                        source.settings.namespace.clone(),
                        source.rendered.subscribe(),
                        node.as_ref().map(|n| n.status()),
                        leader,
                        identity,
                        Duration::from_secs(2),
                    ),
                );
                let name = format!("the cluster (namespace {})", source.settings.namespace);
                tasks.spawn_infallible(
                    "cluster-source",
                    source.run(
                        td.clone(),
                        trust,
                        src_tx,
                        status.clone(),
                        Duration::from_millis(500),
                    ),
                );
                name
            }
            (None, None) => return Err(ControlError::NoSource),
        };
        let cp = ControlPlane::new(rx, mesh_ca.clone(), enrolment, status.clone())
            .with_svid_ttl(config.svid_ttl);
        tasks.spawn_infallible(
            "serve-snapshots",
            serve_with_imports(src_rx, feeds, cp.readiness(), on_mesh, tx, status.clone()),
        );
        let (fail_tx, mut fail_rx) =
            tokio::sync::mpsc::channel(meshfed_peering::tls::FAILURE_QUEUE);
        let incoming = tls::incoming(listener, server_tls, fail_tx);
        tasks.spawn_finite("refusals", async move {
            while let Some(f) = fail_rx.recv().await {
                tracing::info!(remote = %f.remote, reason = %f.reason, "refused a connection");
            }
        });
        let drain = tasks.drain();
        tasks.spawn_graceful("config-server", async move {
            cp.serve(incoming, async move { drain.cancelled().await })
                .await
        });
        // Renew our own SVID at half life, and at once when the signing root changes; follow
        // the CA folder (`meshfed trust rotate`).
        let renew_own = {
            let (mesh_ca, resolver, cp_id) = (mesh_ca.clone(), resolver.clone(), cp_id.clone());
            move || match mesh_ca
                .signing()
                .issue(&cp_id, DEFAULT_SVID_TTL, SystemTime::now())
                .map_err(|e| e.to_string())
                .and_then(|s| resolver.set(&s).map_err(|e| e.to_string()))
            {
                Ok(()) => tracing::info!("renewed the control plane's certificate"),
                Err(e) => tracing::warn!(
                    reason = "RenewFailed",
                    "renewing the control plane's certificate: {e}"
                ),
            }
        };
        {
            let renew_own = renew_own.clone();
            tasks.spawn_infallible("renew", async move {
                loop {
                    tokio::time::sleep(DEFAULT_SVID_TTL / 2).await;
                    renew_own();
                }
            });
        }
        tasks.spawn_infallible(
            "ca-folder",
            rotation::watch_dir(
                mesh_ca.clone(),
                dir.clone(),
                config.rotation_grace,
                Duration::from_millis(500),
                {
                    let (mesh_ca, node) = (mesh_ca.clone(), node.clone());
                    let (mut boot, boot_path) = (boot.clone(), boot_path.clone());
                    let boot_json = boot_json.clone();
                    move |event| {
                        match event {
                            rotation::Event::Trusted => {
                                let Ok(bundle) = mesh_ca.trusted().current_bundle() else {
                                    return true;
                                };
                                // Proxies that start from now on must trust the new root too.
                                boot.bundle = bundle.to_json();
                                if let Err(e) = boot.write(&boot_path) {
                                    tracing::warn!("rewriting {} failed: {e}", boot_path.display());
                                }
                                boot_json
                                    .send_replace(serde_json::to_string(&boot).unwrap_or_default());
                                if let Some(n) = &node {
                                    n.set_bundle(bundle);
                                }
                            }
                            rotation::Event::Signing => {
                                renew_own();
                                if let Some(n) = &node
                                    && let Err(e) = n.reissue(&mesh_ca.signing())
                                {
                                    tracing::warn!(
                                        reason = e.reason(),
                                        "reissuing the peering certificates failed: {e}"
                                    );
                                }
                            }
                        }
                        true
                    }
                },
            ),
        );
        let mut control = Control {
            listen,
            admin: None,
            bootstrap: boot_path.clone(),
            status,
            node,
            campaign: Mutex::new(campaign),
            tasks,
            span,
        };
        if let Some(addr) = config.admin {
            let (st, peering) = (
                control.status.clone(),
                control.node.as_ref().map(|n| n.status()),
            );
            let mut admin = meshfed_proxy::admin::Admin::default();
            admin.pages.insert(
                "/status",
                meshfed_proxy::admin::Page::status(move || {
                    let s = AdminStatus {
                        control: (*st.get()).clone(),
                        peering: peering.as_ref().map(|p| (**p.borrow()).clone()),
                    };
                    serde_json::to_string_pretty(&s).unwrap_or_default()
                }),
            );
            let (bound, task) = meshfed_proxy::admin::serve(addr, admin).await?;
            control.tasks.adopt("admin", task);
            tracing::info!(admin = %bound, "admin endpoint on http://{bound}/status");
            control.admin = Some(bound);
        }
        tracing::info!(
            listen = %listen,
            version,
            "control plane for {source_name} ({td}) on {listen}, serving version {version}; proxies join with {}",
            boot_path.display()
        );
        Ok(control)
    }

    /// The config and certificate endpoint.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The admin endpoint, when asked for.
    pub fn admin(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The bootstrap file proxies join with.
    pub fn bootstrap(&self) -> &std::path::Path {
        &self.bootstrap
    }

    /// The control plane's status now, with its peering node's.
    pub fn status(&self) -> AdminStatus {
        AdminStatus {
            control: (*self.status.get()).clone(),
            peering: self.node.as_ref().map(|n| (**n.status().borrow()).clone()),
        }
    }

    /// The control plane's own status, watched: each change (a version served, a proxy's
    /// ACK or NACK, a certificate issued or refused, a refused file) arrives as it happens.
    /// With `--peering`, [`Control::peering`] has the node's.
    pub fn watch(&self) -> watch::Receiver<Arc<ControlStatus>> {
        self.status.watch()
    }

    /// The peering node's status, watched, when the control plane runs one.
    pub fn peering(&self) -> Option<watch::Receiver<Arc<meshfed_peering::status::NodeStatus>>> {
        self.node.as_ref().map(|n| n.status())
    }

    /// Waits until a task ends on its own; says which and why.
    pub async fn failed(&self) -> TaskFailure {
        match &self.node {
            Some(n) => tokio::select! {
                f = self.tasks.failed() => f,
                f = n.failed() => f,
            },
            None => self.tasks.failed().await,
        }
    }

    /// Stops everything: the peering node, the config server (its streams end), the
    /// sources and writers.
    pub async fn stop(&self) {
        async {
            // A leader steps down and gives the Lease up first, so another replica takes
            // over at once instead of after the lease expires.
            let campaign = self
                .campaign
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(c) = campaign {
                c.release(Duration::from_secs(3)).await;
            }
            if let Some(n) = &self.node {
                n.stop().await;
            }
            self.tasks.shutdown(Duration::from_secs(5)).await;
            tracing::info!("control plane stopped");
        }
        .instrument(self.span.clone())
        .await;
    }
}
