//! `meshfed gateway`: the federation gateways of one mesh for one peer, configured from mesh
//! files (embedded mode; the control-plane stream comes later). The ingress serves what this
//! mesh exports to the peer; the egress carries local sidecars to what the peer exports to us.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use clap::Args;
use meshfed_core::Hostname;
use meshfed_core::federation::{MeshFederation, Peer};
use meshfed_gateway::relay::{self, EgressOptions, EgressRoute, IngressOptions, IngressPeer};
use meshfed_gateway::tunnel::Transport;
use meshfed_trust::ca::DEFAULT_SVID_TTL;
use meshfed_trust::verify::{self, SvidResolver};

use crate::note;
use crate::trust::DirArg;

#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// This mesh's file.
    #[arg(long)]
    mesh: PathBuf,
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
    #[arg(long, value_parser = crate::trust::parse_duration, default_value = "5s")]
    probe_interval: std::time::Duration,
    /// Serve the discovery port (the peer's `spec.remote.discoveryPort`): connections are
    /// forwarded, still encrypted, to the local peering service at --discovery-upstream.
    /// Without ADDR, at the ingress gateway's `discoveryAddress` in `spec.gateways`.
    #[arg(long, num_args = 0..=1, value_name = "ADDR", requires = "discovery_upstream")]
    discovery: Option<Option<SocketAddr>>,
    /// The local peering service (`meshfed peering run --listen`).
    #[arg(long, requires = "discovery")]
    discovery_upstream: Option<SocketAddr>,
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
    crate::runtime(args.workers)?.block_on(run_async(args))
}

/// What `peer` may reach through our ingress: exported name → the local service's endpoints.
fn ingress_peer(mesh: &MeshFederation, peer: &Peer) -> IngressPeer {
    let exports = mesh
        .export_view(peer)
        .services
        .into_values()
        .map(|s| {
            let endpoints = mesh
                .catalog
                .endpoints_of(&s.local)
                .map(|w| w.inbound)
                .collect();
            (s.exported_name, endpoints)
        })
        .collect();
    IngressPeer {
        name: peer.name.to_string(),
        client_id: peer.client_id.clone(),
        exports,
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
                    ingress_id: ingress_id.clone(),
                },
            )
        })
        .collect())
}

async fn run_async(args: GatewayArgs) -> Result<ExitCode> {
    if args.ingress.is_none() && args.egress.is_none() && args.discovery.is_none() {
        bail!("pass --ingress ADDR, --egress ADDR, --discovery ADDR, or several");
    }
    let mesh = crate::node::load_mesh(&args.mesh)?;
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
        note(&format!(
            "ingress for {} on {}: accepts {} and serves {}",
            peer.name,
            g.addr,
            peer.client_id,
            if names.is_empty() {
                "nothing".into()
            } else {
                names.join(", ")
            }
        ));
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
        note(&format!(
            "egress to {} on {} ({} tunnel): carries {}",
            peer.name,
            g.addr,
            args.tunnel,
            if names.is_empty() {
                "nothing".into()
            } else {
                names.join(", ")
            }
        ));
        running.push(g);
        roles.push("egress");
    }
    if let (Some(addr), Some(upstream)) = (discovery_addr, args.discovery_upstream) {
        let g = relay::start_discovery(addr, upstream).await?;
        note(&format!(
            "discovery port on {}: forwards to the peering service at {upstream}",
            g.addr
        ));
        running.push(g);
        roles.push("discovery");
    }
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
            note(&format!("admin on http://{bound}/status"));
            Some(task)
        }
        None => None,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    note(&format!(
        "draining: no new connections; waiting up to {:?} for those in flight",
        args.drain_timeout
    ));
    let left: u64 = drain_all(running, args.drain_timeout).await;
    note(&format!(
        "drained; {left} connection(s) cut at the deadline"
    ));
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
