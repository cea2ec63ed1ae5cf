//! One workload's sidecar as a running component. Joined to the control plane
//! ([`Mode::Joined`]) its certificate comes from a CSR the control plane signs and its
//! configuration from the config stream (validated, then ACKed or NACKed; the last good one
//! keeps serving while the control plane is away); it reports its app's readiness, and on
//! [`Sidecar::drain`] reports not ready at once and keeps serving for the drain time. From a
//! mesh file ([`Mode::File`]) it issues its own SVID from the mesh CA and re-reads the file
//! when it changes.
//!
//! [`Sidecar::build`] returns once the sidecar is certified (joined) or serving (file); the
//! handle owns every task ([`Tasks`]).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshfed_control::client::{Client, ClientState, Received, SnapshotRefused, Update};
use meshfed_core::federation::MeshFederation;
use meshfed_core::import::ImportedRoute;
use meshfed_core::{SpiffeId, TrustDomain};
pub use meshfed_proxy::config::Workload;
use meshfed_proxy::config::{self, ConfigError, Federated};
use meshfed_proxy::dns::{Dns, DnsTable};
use meshfed_proxy::sidecar;
use meshfed_trust::bootstrap::Bootstrap;
use meshfed_trust::ca::{CertificateAuthority, DEFAULT_SVID_TTL};
use meshfed_trust::verify::{self, SvidResolver};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::files::{self, FileError};
use crate::tasks::{AbortOnDrop, TaskFailure, Tasks};

/// Where the sidecar's configuration comes from.
#[derive(Debug, Clone)]
pub enum Mode {
    /// The control plane, joined with a bootstrap file.
    Joined { bootstrap: PathBuf },
    /// A mesh file, with the mesh CA in `dir`; `peer_meshes` are the peers' mesh files whose
    /// exports to this mesh it imports, through `egress` (or the mesh's `spec.gateways`).
    File {
        mesh: PathBuf,
        dir: PathBuf,
        peer_meshes: Vec<PathBuf>,
        egress: Option<SocketAddr>,
    },
}

/// What a sidecar is built from.
#[derive(Debug, Clone)]
pub struct SidecarOptions {
    pub mode: Mode,
    pub workload: Workload,
    /// Joined: how long to keep serving after [`Sidecar::drain`].
    pub drain: Duration,
    /// The DNS proxy, if the sidecar runs one.
    pub dns: Option<DnsOptions>,
}

/// The sidecar's DNS proxy ([`meshfed_proxy::dns`]): where it listens, and the resolvers the
/// names it does not route go to (the pod's own).
#[derive(Debug, Clone)]
pub struct DnsOptions {
    pub listen: SocketAddr,
    pub upstream: Vec<SocketAddr>,
    /// The pod's search domains (search-list forms of routed names are answered too).
    pub search: Vec<String>,
}

/// The name servers and search domains of `/etc/resolv.conf` (the pod's resolver), for the
/// DNS proxy; none when it cannot be read.
pub fn resolv_conf() -> (Vec<SocketAddr>, Vec<String>) {
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|t| {
            (
                meshfed_proxy::dns::nameservers(&t),
                meshfed_proxy::dns::search_domains(&t),
            )
        })
        .unwrap_or_default()
}

/// The names a sidecar configuration routes, for its DNS proxy.
fn dns_table(cfg: &sidecar::SidecarConfig) -> DnsTable {
    DnsTable::new(cfg.services.iter().map(|s| s.host.to_string()))
}

/// Why a sidecar could not start, or a configuration could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the bootstrap file: {0}")]
    Bootstrap(#[from] meshfed_trust::bootstrap::BootstrapError),
    #[error("--namespace is required with --bootstrap")]
    NoNamespace,
    #[error(transparent)]
    Dns(#[from] meshfed_proxy::dns::DnsError),
    #[error("the control plane client: {0}")]
    Client(#[from] meshfed_control::client::ClientError),
    #[error("the control plane at {at} refused a certificate: {source}")]
    Refused {
        at: SocketAddr,
        source: meshfed_control::client::ClientError,
    },
    #[error("issuing the workload's certificate: {0}")]
    Issue(#[from] meshfed_trust::ca::CaError),
    #[error("TLS set-up: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the sidecar: {0}")]
    Sidecar(#[from] sidecar::SidecarError),
    #[error("the workload's identity changed to {0}; restart the sidecar")]
    IdentityChanged(SpiffeId),
    #[error(
        "{host} is imported from {peer}, but mesh {mesh} declares no egress gateway for that peer: add it under spec.gateways or pass --egress"
    )]
    NoEgress {
        host: String,
        peer: String,
        mesh: String,
    },
}

impl SidecarError {
    /// A stable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::File(e) => e.reason(),
            Self::Config(e) => e.reason(),
            Self::Bootstrap(_) => "InvalidBootstrap",
            Self::NoNamespace => "NoNamespace",
            Self::Dns(e) => e.reason(),
            Self::Client(_) => "ClientSetupFailed",
            Self::Refused { .. } => "CertificateRefused",
            Self::Issue(e) => e.reason(),
            Self::Tls(_) => "TlsSetupFailed",
            Self::Sidecar(_) => "SidecarStartFailed",
            Self::IdentityChanged(_) => "IdentityChanged",
            Self::NoEgress { .. } => "NoEgressGateway",
        }
    }
}

/// A running sidecar.
#[derive(Debug)]
pub struct Sidecar {
    tasks: Tasks,
    /// Set by [`Sidecar::drain`].
    drain: watch::Sender<bool>,
    /// Set when the agent is done: drained, or its control plane stream ended for good.
    done: watch::Receiver<bool>,
    /// The DNS proxy, when asked for (stops when the sidecar is dropped).
    dns: Option<Arc<Dns>>,
    span: tracing::Span,
}

impl Sidecar {
    /// Starts the sidecar of `opts.workload`.
    pub async fn build(opts: SidecarOptions) -> Result<Self, SidecarError> {
        let span = tracing::info_span!(
            "component",
            component = %"sidecar",
            workload = %opts.workload.name,
            namespace = %opts.workload.namespace.as_deref().unwrap_or_default(),
        );
        let tasks = Tasks::new();
        let (drain, drain_rx) = watch::channel(false);
        let (done_tx, done) = watch::channel(false);
        let dns = async {
            // DNS first: the app's lookups forward from the start, and the names the sidecar
            // routes are answered once its first configuration is in.
            let dns = match &opts.dns {
                Some(d) => Some(Arc::new(
                    Dns::start(
                        d.listen,
                        d.upstream.clone(),
                        DnsTable::default().with_search(&d.search),
                    )
                    .await?,
                )),
                None => None,
            };
            match &opts.mode {
                Mode::Joined { bootstrap } => {
                    start_joined(&opts, bootstrap, &tasks, drain_rx, done_tx, dns.clone()).await?;
                }
                Mode::File { .. } => start_file(&opts, &tasks, dns.clone()).await?,
            }
            Ok::<_, SidecarError>(dns)
        }
        .instrument(span.clone())
        .await?;
        Ok(Self {
            tasks,
            drain,
            done,
            dns,
            span,
        })
    }

    /// Reports the workload not ready and keeps serving for the drain time; then the sidecar
    /// is done ([`Sidecar::done`]). A sidecar from a mesh file has nothing to report: it is
    /// done at once.
    pub fn drain(&self) {
        self.drain.send_replace(true);
    }

    /// Waits until the sidecar is done (drained, or its control plane stream ended).
    pub async fn done(&self) {
        let mut done = self.done.clone();
        // A sidecar from a mesh file has no agent to say so: it is never done by itself.
        if done.wait_for(|d| *d).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The DNS proxy's address, when it runs one.
    pub fn dns(&self) -> Option<SocketAddr> {
        self.dns.as_ref().map(|d| d.addr)
    }

    /// Waits until one of its tasks ends on its own.
    pub async fn failed(&self) -> TaskFailure {
        self.tasks.failed().await
    }

    /// Stops everything: the listeners close, the streams end.
    pub async fn stop(&self) {
        async {
            self.tasks.shutdown(Duration::from_secs(5)).await;
            tracing::info!("sidecar stopped");
        }
        .instrument(self.span.clone())
        .await;
    }
}

/// The imports of a mesh run from files: what the peers' mesh files export to `mesh`, mapped
/// by its `ImportedServiceSet`s, each through the egress gateway the mesh declares for that
/// peer (or `egress`).
fn file_imports(
    mesh: &MeshFederation,
    peer_meshes: &[PathBuf],
    egress: Option<SocketAddr>,
) -> Result<Vec<ImportedRoute>, SidecarError> {
    if peer_meshes.is_empty() {
        return Ok(Vec::new());
    }
    let peers = peer_meshes
        .iter()
        .map(|p| files::load_mesh(p))
        .collect::<Result<Vec<_>, _>>()?;
    let plan = meshfed_core::federation::explain(mesh, &peers, None).imports;
    let (routes, missing) = meshfed_core::import::routes_from_plan(
        &plan,
        |peer| egress.or_else(|| mesh.peers.get(peer).and_then(|p| mesh.egress_address(p))),
        |_, _| None,
    );
    if let Some((host, peer)) = missing.first() {
        return Err(SidecarError::NoEgress {
            host: host.to_string(),
            peer: peer.to_string(),
            mesh: mesh.mesh.to_string(),
        });
    }
    Ok(routes)
}

fn describe(workload: &str, id: &SpiffeId, r: &sidecar::Running) -> String {
    format!(
        "sidecar for {workload} as {id}: inbound mTLS on {}{}{}",
        r.inbound.map_or("-".into(), |a| a.to_string()),
        r.outbound
            .map_or(String::new(), |a| format!(", outbound on {a}")),
        r.admin
            .map_or(String::new(), |a| format!(", admin on http://{a}")),
    )
}

/// The mesh file's configuration for the workload.
fn file_config(
    opts: &SidecarOptions,
    path: &std::path::Path,
    peer_meshes: &[PathBuf],
    egress: Option<SocketAddr>,
    allow: &BTreeSet<TrustDomain>,
) -> Result<(sidecar::SidecarConfig, SpiffeId), SidecarError> {
    let mesh = files::load_mesh(path)?;
    let fed = Federated {
        imports: file_imports(&mesh, peer_meshes, egress)?,
        ..Federated::default()
    };
    Ok(config::from_mesh(&mesh, &fed, &opts.workload, allow)?)
}

async fn start_file(
    opts: &SidecarOptions,
    tasks: &Tasks,
    dns: Option<Arc<Dns>>,
) -> Result<(), SidecarError> {
    let Mode::File {
        mesh: path,
        dir,
        peer_meshes,
        egress,
    } = &opts.mode
    else {
        return Ok(());
    };
    let mesh = files::load_mesh(path)?;
    let (ca, held) = files::load_ca_for(dir, &mesh)?;
    let allow: BTreeSet<TrustDomain> = held.domains().cloned().collect();
    let (cfg, id) = file_config(opts, path, peer_meshes, *egress, &allow)?;
    let svid = ca.issue(&id, DEFAULT_SVID_TTL, SystemTime::now())?;
    let resolver = Arc::new(SvidResolver::new(&svid, verify::provider())?);
    let app = cfg.app.map_or("-".into(), |a| a.to_string());
    if let Some(d) = &dns {
        d.set_table(dns_table(&cfg));
    }
    let running = sidecar::start(cfg, resolver.clone(), verify::shared(held)).await?;
    tracing::info!(
        "{}, app {app}",
        describe(&opts.workload.name, &id, &running)
    );
    // Renew the SVID at half life.
    {
        let (dir, id, resolver) = (dir.clone(), id.clone(), resolver.clone());
        tasks.spawn_infallible("renew", async move {
            loop {
                tokio::time::sleep(DEFAULT_SVID_TTL / 2).await;
                let renewed = CertificateAuthority::load(&dir)
                    .map_err(|e| e.to_string())
                    .and_then(|ca| {
                        ca.issue(&id, DEFAULT_SVID_TTL, SystemTime::now())
                            .map_err(|e| e.to_string())
                    })
                    .and_then(|svid| resolver.set(&svid).map_err(|e| e.to_string()));
                if let Err(e) = renewed {
                    tracing::warn!(reason = "RenewFailed", "renewing the SVID: {e}");
                }
            }
        });
    }
    // Re-read the mesh file when it changes; a file that does not load keeps the running
    // configuration, with the reason logged. The running sidecar lives in this task.
    let (opts, path, peer_meshes, egress) =
        (opts.clone(), path.clone(), peer_meshes.clone(), *egress);
    tasks.spawn_infallible("mesh-file", async move {
        let read = || std::fs::read(&path).ok();
        let mut last = read();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = read();
            if now == last {
                continue;
            }
            last = now;
            let applied = file_config(&opts, &path, &peer_meshes, egress, &allow).and_then(
                |(cfg, new_id)| {
                    if new_id != id {
                        return Err(SidecarError::IdentityChanged(new_id));
                    }
                    running.update(&cfg)?;
                    if let Some(d) = &dns {
                        d.set_table(dns_table(&cfg));
                    }
                    Ok(())
                },
            );
            match applied {
                Ok(()) => tracing::info!("applied the new {}", path.display()),
                Err(e) => tracing::warn!(
                    reason = e.reason(),
                    "keeping the previous configuration: {e}"
                ),
            }
        }
    });
    Ok(())
}

/// The first certificate from the control plane at `cp`, retried with backoff while it is
/// unreachable (it may still be starting).
pub async fn certify_first(
    client: &Client,
    cp: SocketAddr,
) -> Result<meshfed_trust::Svid, SidecarError> {
    let mut wait = Duration::from_millis(200);
    loop {
        match client.certify(None).await {
            Ok(s) => return Ok(s),
            Err(e) if e.reason == "ControlPlaneUnreachable" => {
                tracing::info!("waiting for the control plane at {cp}: {e}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(source) => return Err(SidecarError::Refused { at: cp, source }),
        }
    }
}

/// Joins the control plane: a first certificate with the bootstrap token, then the config
/// stream. The listeners start with the first good snapshot; later ones are applied live.
async fn start_joined(
    opts: &SidecarOptions,
    path: &std::path::Path,
    tasks: &Tasks,
    drain: watch::Receiver<bool>,
    done: watch::Sender<bool>,
    dns: Option<Arc<Dns>>,
) -> Result<(), SidecarError> {
    let boot = Bootstrap::read(path)?;
    let Some(namespace) = opts.workload.namespace.clone() else {
        return Err(SidecarError::NoNamespace);
    };
    let cp = boot.control_plane;
    // The app's readiness goes to the control plane on the config stream.
    let (ready_tx, ready_rx) = watch::channel(meshfed_api::config::Report::default());
    let client = Client::new(boot, &namespace, &opts.workload.name)?.with_reports(ready_rx);
    let svid = certify_first(&client, cp).await?;
    let id = svid.id.clone();
    let resolver = Arc::new(SvidResolver::new(&svid, verify::provider())?);
    tracing::info!("certified as {id} by {cp}");
    {
        let (client, resolver) = (client.clone(), resolver.clone());
        tasks.spawn_infallible("renew", async move {
            client.renew_forever(resolver, svid).await;
        });
    }
    let (updates, rx) = mpsc::channel::<Update>(1);
    let (state, _) = watch::channel(ClientState::default());
    {
        let (client, resolver) = (client.clone(), resolver.clone());
        tasks.spawn_finite("config-stream", async move {
            client.subscribe(resolver, updates, state).await;
        });
    }
    let agent = Agent {
        workload: opts.workload.clone(),
        drain_for: opts.drain,
        client,
        resolver,
        id,
        ready: ready_tx,
        dns,
    };
    tasks.spawn_finite("agent", async move {
        agent.run(rx, drain).await;
        done.send_replace(true);
    });
    Ok(())
}

/// The joined sidecar's loop: applies snapshots, reports readiness, drains.
struct Agent {
    workload: Workload,
    drain_for: Duration,
    client: Client,
    resolver: Arc<SvidResolver>,
    id: SpiffeId,
    ready: watch::Sender<meshfed_api::config::Report>,
    dns: Option<Arc<Dns>>,
}

impl Agent {
    async fn run(self, mut rx: mpsc::Receiver<Update>, mut drain: watch::Receiver<bool>) {
        let mut running: Option<sidecar::Running> = None;
        // Aborted when dropped: also when the agent itself is stopped mid-loop.
        let mut readiness: Option<AbortOnDrop> = None;
        // Set once draining: serve until then.
        let mut drain_until: Option<tokio::time::Instant> = None;
        loop {
            let drained = async {
                match drain_until {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = drained => break,
                asked = async { drain.wait_for(|d| *d).await.is_ok() }, if drain_until.is_none() => {
                    if !asked || self.drain_for.is_zero() {
                        break;
                    }
                    // Draining: not ready from now on, serving what still comes for the
                    // drain time.
                    drop(readiness.take());
                    self.ready.send_modify(|r| {
                        r.workload = Some(meshfed_api::config::WorkloadReadiness { ready: false });
                    });
                    tracing::info!(
                        "draining: reported not ready; serving for {:?} more",
                        self.drain_for
                    );
                    drain_until = Some(tokio::time::Instant::now() + self.drain_for);
                }
                u = rx.recv() => {
                    let Some(u) = u else { break };
                    let r = self.apply(&mut running, u.received).await;
                    match &r {
                        Ok((version, _)) => tracing::info!("applied config version {version}"),
                        Err(e) => tracing::warn!(
                            reason = e.reason(),
                            "keeping the previous configuration: {e}"
                        ),
                    }
                    if let Ok((_, Some(app))) = &r
                        && readiness.is_none()
                        && drain_until.is_none()
                    {
                        readiness = Some(AbortOnDrop::new(&tokio::spawn(
                            report_readiness(*app, self.ready.clone()).in_current_span(),
                        )));
                    }
                    let _ = u
                        .done
                        .send(r.map(|_| ()).map_err(SnapshotRefused::apply_failed));
                }
            }
        }
        drop(readiness);
        drop(running);
    }

    /// Applies one validated snapshot: starts the sidecar on the first, updates it after.
    /// The version applied, and the app's address.
    async fn apply(
        &self,
        running: &mut Option<sidecar::Running>,
        received: Received,
    ) -> Result<(u64, Option<SocketAddr>), SidecarError> {
        let allow: BTreeSet<TrustDomain> = received.bundles.domains().cloned().collect();
        let fed = Federated {
            imports: received.imports,
            exported: received.exported_names,
            exported_to: received.exported_to,
            unready: received.unready,
        };
        let (cfg, want) = config::from_mesh(&received.mesh.mesh, &fed, &self.workload, &allow)?;
        let app = cfg.app;
        let table = dns_table(&cfg);
        if want != self.id {
            return Err(SidecarError::IdentityChanged(want));
        }
        let bundles = self.client.bundles();
        // New bundles first, so a newly allowed domain is verifiable at once; the old ones
        // go back if the configuration is refused.
        let previous = bundles.swap(Arc::new(received.bundles));
        let result = match running {
            Some(r) => r.update(&cfg).map_err(SidecarError::from),
            None => match sidecar::start(cfg, self.resolver.clone(), bundles.clone()).await {
                Ok(r) => {
                    tracing::info!("{}", describe(&self.workload.name, &self.id, &r));
                    *running = Some(r);
                    Ok(())
                }
                Err(e) => Err(e.into()),
            },
        };
        if let Err(e) = result {
            bundles.store(previous);
            return Err(e);
        }
        if let Some(d) = &self.dns {
            d.set_table(table);
        }
        Ok((received.version, app))
    }
}

/// Checks every second whether the app accepts connections and reports each change (and
/// the current state when the stream reopens) to the control plane.
async fn report_readiness(app: SocketAddr, tx: watch::Sender<meshfed_api::config::Report>) {
    loop {
        let ready =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(app))
                .await
                .is_ok_and(|r| r.is_ok());
        tx.send_if_modified(|r| {
            let now = Some(meshfed_api::config::WorkloadReadiness { ready });
            if r.workload == now {
                return false;
            }
            r.workload = now;
            true
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
