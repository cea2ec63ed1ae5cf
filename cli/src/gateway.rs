//! `meshfed gateway`: the federation gateways of one mesh for one peer, configured from mesh
//! files or joined to the control plane (certificates and configuration from its stream,
//! followed live). The ingress serves what this mesh exports to the peer; the egress carries
//! local sidecars to what the peer exports to us.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use clap::Args;
use meshfed_control::GatewayPlan;
use meshfed_control::client::SnapshotRefused;
use meshfed_control::client::{Client, ClientState, Update};
use meshfed_core::Hostname;
use meshfed_core::federation::{MeshFederation, Peer};
use meshfed_gateway::relay::{self, EgressOptions, EgressRoute, IngressOptions, IngressPeer};
use meshfed_gateway::tunnel::{PeerIdentity, Transport};
use meshfed_trust::bootstrap::Bootstrap;
use meshfed_trust::ca::DEFAULT_SVID_TTL;
use meshfed_trust::verify::{self, SvidResolver};
use tokio::sync::{mpsc, watch};

use crate::trust::DirArg;

#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// Run from this mesh's file (and --peer-mesh for the egress), with SVIDs from the CA in
    /// --dir.
    #[arg(
        long,
        conflicts_with = "bootstrap",
        required_unless_present = "bootstrap"
    )]
    mesh: Option<PathBuf>,
    /// Join the control plane with this bootstrap file (written by `meshfed control`): the
    /// gateways' certificates and configuration (what the peer may reach, what it exports to
    /// us) come from it and follow its changes.
    #[arg(long)]
    bootstrap: Option<PathBuf>,
    /// With --bootstrap: the ingress gateway's name in `spec.gateways` (default
    /// `ingress-<peer>`).
    #[arg(long, requires = "bootstrap")]
    ingress_name: Option<String>,
    /// With --bootstrap: the egress gateway's name in `spec.gateways` (default
    /// `egress-<peer>`).
    #[arg(long, requires = "bootstrap")]
    egress_name: Option<String>,
    /// The `ServiceMeshPeer` (by name) these gateways serve.
    #[arg(long)]
    peer: String,
    /// The peer mesh's file: what it exports to us and the identity of its ingress gateway
    /// (needed for --egress).
    #[arg(long)]
    peer_mesh: Option<PathBuf>,
    #[command(flatten)]
    dir: DirArg,
    /// Serve the ingress: the peer's egress reaches it at the `spec.remote.addresses` and
    /// `servicePort` of its `ServiceMeshPeer` for this mesh. Without ADDR, at the address
    /// `spec.gateways` gives the peer's ingress gateway (`ingress-<peer>` by default).
    #[arg(long, num_args = 0..=1, value_name = "ADDR")]
    ingress: Option<Option<SocketAddr>>,
    /// Serve the egress, for this mesh's sidecars. Without ADDR, at the address
    /// `spec.gateways` gives the peer's egress gateway (`egress-<peer>` by default).
    #[arg(long, num_args = 0..=1, value_name = "ADDR")]
    egress: Option<Option<SocketAddr>>,
    /// The egress's tunnel to the peer's ingress: `tcp` (TCP + TLS, a connection per stream)
    /// or `quic` (multiplexed streams on one connection). The ingress always serves both.
    #[arg(long, default_value = "tcp")]
    tunnel: Transport,
    /// How often the egress probes the peer's ingress (reachability and tunnel RTT in
    /// `/status` and `/metrics`); `0s` turns probing off.
    #[arg(long, value_parser = crate::trust::parse_duration_or_zero, default_value = "5s")]
    probe_interval: std::time::Duration,
    /// Serve the discovery port (the peer's `spec.remote.discoveryPort`): connections are
    /// forwarded, still encrypted, to the local peering service at --discovery-upstream.
    /// Without ADDR, at the ingress gateway's `discoveryAddress` in `spec.gateways`.
    #[arg(long, num_args = 0..=1, value_name = "ADDR", requires = "discovery_upstream")]
    discovery: Option<Option<SocketAddr>>,
    /// The local peering service (`meshfed peering run --listen`, or the control plane's
    /// `--peering`), `HOST:PORT`; a name is resolved when the forwarder starts.
    #[arg(long, requires = "discovery", value_name = "HOST:PORT")]
    discovery_upstream: Option<String>,
    /// Loopback admin endpoint: `GET /status` (JSON counts per gateway: accepted, active and
    /// upstream connections, refusals by peer and reason, per-peer streams, bytes, reachability
    /// and RTT), `GET /metrics` (Prometheus) and `GET /healthz`.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// On SIGTERM or Ctrl-C: stop accepting, then let connections in flight finish for up to
    /// this long (Istio's `terminationDrainDuration` default).
    #[arg(long, value_parser = crate::trust::parse_duration, default_value = "5s")]
    drain_timeout: std::time::Duration,
    /// Worker threads (1: a single-threaded runtime).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
}

pub fn run(args: GatewayArgs) -> Result<ExitCode> {
    let span = tracing::info_span!("component", component = %"gateway", peer = %args.peer);
    crate::runtime(args.workers)?.block_on(tracing::Instrument::instrument(run_async(args), span))
}

/// What `peer` may reach through our ingress: exported name → the local service's endpoints.
fn ingress_peer(mesh: &MeshFederation, peer: &Peer) -> IngressPeer {
    IngressPeer {
        name: peer.name.to_string(),
        client_id: peer.client_id.clone(),
        exports: mesh.ingress_exports(peer),
    }
}

/// Where our egress sends each name `peer_mesh` exports to us.
async fn egress_routes(
    mesh: &MeshFederation,
    peer: &Peer,
    peer_mesh: &MeshFederation,
) -> Result<BTreeMap<Hostname, EgressRoute>> {
    if peer_mesh.trust_domain != peer.trust_domain {
        bail!(
            "the peer mesh file is for {}, but ServiceMeshPeer {} is {}",
            peer_mesh.trust_domain,
            peer.name,
            peer.trust_domain
        );
    }
    let Some(us) = peer_mesh.peer_for(&mesh.trust_domain) else {
        bail!(
            "mesh {} has no ServiceMeshPeer for {}: it exports nothing to us",
            peer_mesh.mesh,
            mesh.trust_domain
        );
    };
    let ingress_id = peer_mesh.ingress_identity(us)?;
    let host = peer
        .addresses
        .first()
        .with_context(|| format!("ServiceMeshPeer {} has no spec.remote.addresses", peer.name))?;
    let ingress = tokio::net::lookup_host((host.as_str(), peer.service_port))
        .await
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
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

async fn run_async(args: GatewayArgs) -> Result<ExitCode> {
    if args.ingress.is_none() && args.egress.is_none() && args.discovery.is_none() {
        bail!("pass --ingress [ADDR], --egress [ADDR], --discovery [ADDR], or several");
    }
    match (&args.bootstrap, &args.mesh) {
        (Some(b), _) => run_joined(&args, b).await,
        (None, Some(m)) => run_file(&args, m).await,
        (None, None) => bail!("pass --mesh FILE or --bootstrap FILE"),
    }
}

async fn run_file(args: &GatewayArgs, mesh_path: &std::path::Path) -> Result<ExitCode> {
    let mesh = crate::node::load_mesh(mesh_path)?;
    let Some(peer) = mesh.peers.values().find(|p| p.name.as_str() == args.peer) else {
        let known: Vec<String> = mesh.peers.keys().map(ToString::to_string).collect();
        bail!(
            "mesh {} has no ServiceMeshPeer {:?}; peers: {}",
            mesh.mesh,
            args.peer,
            known.join(", ")
        );
    };
    let declared = |role: &str, name: &str, flag: &str| {
        anyhow::anyhow!(
            "mesh {} declares no {role} gateway {name:?}: add it under spec.gateways or pass {flag} ADDR",
            mesh.mesh
        )
    };
    let ingress_addr = match args.ingress {
        None => None,
        Some(Some(a)) => Some(a),
        Some(None) => Some(
            mesh.ingress_address(peer)
                .ok_or_else(|| declared("ingress", &peer.ingress_gateway, "--ingress"))?
                .address,
        ),
    };
    let egress_addr = match args.egress {
        None => None,
        Some(Some(a)) => Some(a),
        Some(None) => Some(
            mesh.egress_address(peer)
                .ok_or_else(|| declared("egress", &peer.egress_gateway, "--egress"))?,
        ),
    };
    let discovery_addr = match args.discovery {
        None => None,
        Some(Some(a)) => Some(a),
        Some(None) => Some(
            mesh.ingress_address(peer)
                .and_then(|g| g.discovery)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "mesh {} declares no discoveryAddress for gateway {:?}: add it under spec.gateways or pass --discovery ADDR",
                        mesh.mesh,
                        peer.ingress_gateway
                    )
                })?,
        ),
    };
    let (ca, held) = crate::node::load_ca_for(&args.dir.dir, &mesh)?;
    if held.get(&peer.trust_domain).is_none() {
        bail!(
            "no trust bundle for {} in {}: import one (`meshfed trust bundle import`) or accept a peering token",
            peer.trust_domain,
            args.dir.dir.display()
        );
    }
    let bundles = verify::shared(held);
    let issue = |id| -> Result<Arc<SvidResolver>> {
        let svid = ca.issue(&id, DEFAULT_SVID_TTL, SystemTime::now())?;
        Ok(Arc::new(SvidResolver::new(&svid, verify::provider())?))
    };
    let mut running = Vec::new();
    let mut roles = Vec::new();
    if let Some(addr) = ingress_addr {
        let ip = ingress_peer(&mesh, peer);
        let names: Vec<String> = ip.exports.keys().map(ToString::to_string).collect();
        let g = relay::start_ingress(
            addr,
            Arc::new(RwLock::new(Arc::new(vec![ip]))),
            issue(mesh.ingress_identity(peer)?)?,
            bundles.clone(),
            IngressOptions {
                quic: true,
                reset_key: Some(reset_key(&args.dir.dir)?),
            },
        )
        .await?;
        tracing::info!(
            "ingress for {} on {}: accepts {} and serves {}",
            peer.name,
            g.addr,
            peer.client_id,
            if names.is_empty() {
                "nothing".into()
            } else {
                names.join(", ")
            }
        );
        running.push(g);
        roles.push("ingress");
    }
    if let Some(addr) = egress_addr {
        let Some(path) = &args.peer_mesh else {
            bail!("--egress needs --peer-mesh (what the peer exports to us)");
        };
        let peer_mesh = crate::node::load_mesh(path)?;
        let routes = egress_routes(&mesh, peer, &peer_mesh).await?;
        let names: Vec<String> = routes.keys().map(ToString::to_string).collect();
        let g = relay::start_egress(
            addr,
            Arc::new(RwLock::new(Arc::new(routes))),
            issue(mesh.egress_identity(peer)?)?,
            bundles.clone(),
            EgressOptions {
                transport: args.tunnel,
                probe_interval: (!args.probe_interval.is_zero()).then_some(args.probe_interval),
            },
        )
        .await?;
        tracing::info!(
            "egress to {} on {} ({} tunnel): carries {}",
            peer.name,
            g.addr,
            args.tunnel,
            if names.is_empty() {
                "nothing".into()
            } else {
                names.join(", ")
            }
        );
        running.push(g);
        roles.push("egress");
    }
    if let (Some(addr), Some(upstream)) = (discovery_addr, &args.discovery_upstream) {
        running.push(start_discovery(addr, upstream).await?);
        roles.push("discovery");
    }
    serve_and_drain(args, running, roles).await
}

async fn start_discovery(addr: SocketAddr, upstream: &str) -> Result<relay::Gateway> {
    let upstream = crate::node::resolve_host_port(upstream).await?;
    let g = relay::start_discovery(addr, upstream).await?;
    tracing::info!(
        "discovery port on {}: forwards to the peering service at {upstream}",
        g.addr
    );
    Ok(g)
}

/// Serves the admin endpoint until SIGTERM or Ctrl-C, then drains every gateway.
async fn serve_and_drain(
    args: &GatewayArgs,
    running: Vec<relay::Gateway>,
    roles: Vec<&'static str>,
) -> Result<ExitCode> {
    let _admin = match args.admin {
        Some(addr) => {
            let views: Vec<(&'static str, Arc<relay::GatewayStats>)> = roles
                .iter()
                .copied()
                .zip(running.iter().map(|g| g.stats.clone()))
                .collect();
            let status: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || {
                let body: serde_json::Map<String, serde_json::Value> = views
                    .iter()
                    .map(|(role, st)| ((*role).to_owned(), st.to_json()))
                    .collect();
                serde_json::Value::Object(body).to_string()
            });
            let all: Vec<Arc<relay::GatewayStats>> =
                running.iter().map(|g| g.stats.clone()).collect();
            let pages: meshfed_peering::admin::Pages = Arc::new(move |path| {
                (path == "/metrics").then(|| {
                    let refs: Vec<&relay::GatewayStats> = all.iter().map(AsRef::as_ref).collect();
                    (
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        meshfed_gateway::stats::encode_metrics(&refs),
                    )
                })
            });
            let (bound, task) =
                meshfed_peering::admin::serve_with(addr, status, Some(pages)).await?;
            tracing::info!("admin on http://{bound}/status");
            Some(task)
        }
        None => None,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!(
        "draining: no new connections; waiting up to {:?} for those in flight",
        args.drain_timeout
    );
    let left: u64 = drain_all(running, args.drain_timeout).await;
    tracing::info!("drained; {left} connection(s) cut at the deadline");
    Ok(ExitCode::SUCCESS)
}

/// Drains every gateway at once; the connections still open at the deadline.
async fn drain_all(gateways: Vec<relay::Gateway>, deadline: std::time::Duration) -> u64 {
    let tasks: Vec<_> = gateways
        .into_iter()
        .map(|g| tokio::spawn(g.drain(deadline)))
        .collect();
    let mut left = 0;
    for t in tasks {
        left += t.await.unwrap_or(0);
    }
    left
}

/// The ingress's QUIC stateless-reset key, kept at `DIR/quic-reset.key` (mode 0600) so a
/// restarted ingress can tell peers' egresses at once that their old connection is gone.
fn reset_key(dir: &std::path::Path) -> Result<[u8; 32]> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("quic-reset.key");
    match std::fs::read(&path) {
        Ok(bytes) => bytes.as_slice().try_into().with_context(|| {
            format!(
                "{}: a QUIC reset key is 32 bytes, this file has {}; delete it to make a new one",
                path.display(),
                bytes.len()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = meshfed_gateway::tunnel::new_reset_key()?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            f.write_all(&key)
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The namespace in a control plane's SPIFFE ID (`spiffe://td/ns/NS/sa/…`): the mesh's
/// control-plane namespace, where its gateways run.
fn control_namespace(id: &meshfed_core::SpiffeId) -> Result<String> {
    let parts: Vec<&str> = id.path().split('/').collect();
    match parts.as_slice() {
        ["", "ns", ns, "sa", _] => Ok((*ns).to_owned()),
        _ => bail!("the control plane's identity {id} names no namespace"),
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
) -> Result<(Client, Arc<SvidResolver>)> {
    let client = match sibling_of {
        Some(c) => c.sibling(name),
        None => Client::new(boot.clone(), namespace, name)?,
    };
    let svid = crate::proxy::certify_first(&client, boot.control_plane).await?;
    let resolver = Arc::new(SvidResolver::new(&svid, verify::provider())?);
    tracing::info!("certified as {} by {}", svid.id, boot.control_plane);
    {
        let (client, resolver) = (client.clone(), resolver.clone());
        tokio::spawn(async move { client.renew_forever(resolver, svid).await });
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
async fn plan_egress(plan: &GatewayPlan, peer: &str) -> Result<BTreeMap<Hostname, EgressRoute>> {
    let mut routes = BTreeMap::new();
    for t in plan.egress.iter().filter(|t| t.peer.as_str() == peer) {
        let ingress = tokio::net::lookup_host(t.ingress.as_str())
            .await
            .with_context(|| format!("resolving {}", t.ingress))?
            .next()
            .with_context(|| format!("{} has no address", t.ingress))?;
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
    async fn apply(&self, received: &meshfed_control::client::Received) -> Result<()> {
        let plan = received.gateway.as_ref().context(
            "the control plane sent no gateway configuration: is this gateway declared under spec.gateways?",
        )?;
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
fn answer<T>(update: Update, r: Result<T>) -> Option<T> {
    let version = update.received.version;
    match r {
        Ok(x) => {
            tracing::info!("applied config version {version}");
            let _ = update.done.send(Ok(()));
            Some(x)
        }
        Err(e) => {
            tracing::warn!("refused config version {version}: {e:#}");
            let _ = update
                .done
                .send(Err(SnapshotRefused::apply_failed(format!("{e:#}"))));
            None
        }
    }
}

/// Joined to the control plane: the ingress and egress certify as their gateways'
/// identities, then follow the configuration stream.
async fn run_joined(args: &GatewayArgs, path: &std::path::Path) -> Result<ExitCode> {
    let boot = Bootstrap::read(path)?;
    let namespace = control_namespace(&boot.control_plane_id)?;
    let peer = args.peer.clone();
    let ingress_name = args
        .ingress_name
        .clone()
        .unwrap_or_else(|| format!("ingress-{peer}"));
    let egress_name = args
        .egress_name
        .clone()
        .unwrap_or_else(|| format!("egress-{peer}"));
    let serve_ingress = args.ingress.is_some() || args.discovery.is_some();
    let ingress_id = match serve_ingress {
        true => Some(join(&boot, &namespace, &ingress_name, None).await?),
        false => None,
    };
    let egress_id = match args.egress.is_some() {
        true => Some(
            join(
                &boot,
                &namespace,
                &egress_name,
                ingress_id.as_ref().map(|(c, _)| c),
            )
            .await?,
        ),
        false => None,
    };
    // One subscription carries the whole gateway configuration.
    let Some((client, resolver)) = ingress_id.clone().or_else(|| egress_id.clone()) else {
        bail!("pass --ingress [ADDR] or --egress [ADDR]");
    };
    let bundles = client.bundles();
    // The egress's probe results go to the control plane on the config stream.
    let (reports_tx, reports_rx) = watch::channel(meshfed_api::config::Report::default());
    let client = client.with_reports(reports_rx);
    let (updates, mut rx) = mpsc::channel::<Update>(1);
    let (state, _) = watch::channel(ClientState::default());
    let subscription = tokio::spawn({
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
    // The first good snapshot starts the listeners.
    let (running, roles) = loop {
        let Some(update) = rx.recv().await else {
            bail!("the control-plane subscription ended");
        };
        let r = async {
            let received = &update.received;
            served.apply(received).await?;
            let gateways = &received.mesh.mesh.gateways;
            let addr = |flag: &Option<Option<SocketAddr>>, name: &str, discovery: bool| -> Result<Option<SocketAddr>> {
                Ok(match flag {
                    None => None,
                    Some(Some(a)) => Some(*a),
                    Some(None) => Some(
                        gateways
                            .get(name)
                            .and_then(|g| if discovery { g.discovery } else { Some(g.address) })
                            .with_context(|| format!("the mesh declares no {} for gateway {name:?} under spec.gateways; pass the address", if discovery { "discoveryAddress" } else { "address" }))?,
                    ),
                })
            };
            let ingress_addr = addr(&args.ingress, &ingress_name, false)?;
            let egress_addr = addr(&args.egress, &egress_name, false)?;
            let discovery_addr = addr(&args.discovery, &ingress_name, true)?;
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
                        reset_key: Some(reset_key(&args.dir.dir)?),
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
                    EgressOptions {
                        transport: args.tunnel,
                        probe_interval: (!args.probe_interval.is_zero())
                            .then_some(args.probe_interval),
                    },
                )
                .await?;
                tracing::info!("egress to {peer} on {} ({} tunnel)", g.addr, args.tunnel);
                tokio::spawn(report_reachability(g.stats.clone(), reports_tx.clone()));
                running.push(g);
                roles.push("egress");
            }
            if let (Some(a), Some(upstream)) = (discovery_addr, &args.discovery_upstream) {
                running.push(start_discovery(a, upstream).await?);
                roles.push("discovery");
            }
            anyhow::Ok((running, roles))
        }
        .await;
        if let Some(x) = answer(update, r) {
            break x;
        }
    };
    // Later snapshots update what the gateways serve, live.
    let follow = tokio::spawn(async move {
        while let Some(update) = rx.recv().await {
            let r = served.apply(&update.received).await;
            answer(update, r);
        }
    });
    let code = serve_and_drain(args, running, roles).await;
    follow.abort();
    subscription.abort();
    code
}

/// Publishes the egress's probe results whenever a peer's reachability changes (and the RTT
/// with them, refreshed at least every 30 s), for the control plane.
async fn report_reachability(
    stats: Arc<relay::GatewayStats>,
    tx: watch::Sender<meshfed_api::config::Report>,
) {
    let mut last_sent = std::time::Instant::now();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
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
        let stale = last_sent.elapsed() > std::time::Duration::from_secs(30);
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
