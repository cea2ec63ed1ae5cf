//! `meshfed proxy`: one workload's sidecar. With `--bootstrap` it joins the control plane:
//! its certificate comes from a CSR the control plane signs, its configuration from the config
//! stream (validated, then ACKed or NACKed; the last good one keeps serving while the control
//! plane is away). With `--mesh` it runs from a local mesh file and issues its own SVID from
//! the mesh CA in `--dir` (tests and quick experiments).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Args;
use meshfed_control::client::SnapshotRefused;
use meshfed_control::client::{Client, ClientState, Update};
use meshfed_core::catalog::Protocol;
use meshfed_core::federation::MeshFederation;
use meshfed_core::import::ImportedRoute;
use meshfed_core::traffic::TrafficPolicy;
use meshfed_core::{SpiffeId, TrustDomain};
use meshfed_proxy::sidecar::{
    self, Endpoint, HttpVersion, OutboundService, SidecarConfig, TcpForward,
};
use meshfed_trust::bootstrap::Bootstrap;
use meshfed_trust::ca::{CertificateAuthority, DEFAULT_SVID_TTL};
use meshfed_trust::verify::{self, Expect, SvidResolver};
use tokio::sync::{mpsc, watch};

use crate::trust::DirArg;

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// Join the control plane with this bootstrap file (written by `meshfed control`).
    #[arg(long, conflicts_with = "mesh", required_unless_present = "mesh")]
    bootstrap: Option<PathBuf>,
    /// Run from this mesh file instead (its `workloads` give routes and addresses).
    #[arg(long)]
    mesh: Option<PathBuf>,
    /// The workload this sidecar serves.
    #[arg(long)]
    workload: String,
    /// The workload's namespace (required with --bootstrap; with --mesh only if the name is
    /// not unique).
    #[arg(long)]
    namespace: Option<String>,
    #[command(flatten)]
    dir: DirArg,
    /// Where the local app sends outbound requests (plaintext HTTP; omit for inbound only).
    #[arg(long)]
    outbound: Option<SocketAddr>,
    /// The admin listener: /healthz/live, /healthz/ready, /metrics (plaintext; keep it on
    /// loopback or a pod-local address).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Forward a TCP service port to a local listener: `SERVICE:PORT=LISTEN`, where SERVICE
    /// is the service's hostname or `name.namespace`, e.g. `db.data:5432=127.0.0.1:15432`.
    /// The port must be a TCP or TLS port of the service. Repeatable.
    #[arg(long = "tcp", value_name = "SERVICE:PORT=LISTEN")]
    tcp: Vec<String>,
    /// With --mesh: a peer mesh's file (repeatable). What it exports to this mesh is imported
    /// through this mesh's `ImportedServiceSet` for it and called through this mesh's egress
    /// gateway for that peer (its address from `spec.gateways`, or --egress). (Joined to the
    /// control plane, imports come from peering instead.)
    #[arg(long, requires = "mesh")]
    peer_mesh: Vec<PathBuf>,
    /// The egress gateway for every peer, instead of the addresses in `spec.gateways`: calls
    /// to imported services go there, with the peer's exported name as the TLS server name.
    #[arg(long, requires = "peer_mesh")]
    egress: Option<SocketAddr>,
    /// Joined to a control plane: on SIGTERM, report the workload not ready at once and keep
    /// serving this long before exiting (so callers move away first, like Istio's
    /// terminationDrainDuration); a second signal exits at once. `0s`: exit at once.
    #[arg(long, default_value = "5s", value_parser = crate::trust::parse_duration_or_zero)]
    drain: Duration,
    /// Worker threads (Istio's sidecar default concurrency is 2).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
}

pub fn run(args: ProxyArgs) -> Result<ExitCode> {
    let span = tracing::info_span!(
        "component",
        component = %"sidecar",
        workload = %args.workload,
        namespace = %args.namespace.as_deref().unwrap_or_default(),
    );
    crate::runtime(args.workers)?.block_on(tracing::Instrument::instrument(run_async(args), span))
}

/// One `--tcp SERVICE:PORT=LISTEN`: the service's TCP port, its endpoints, the listener.
fn tcp_forward(
    mesh: &MeshFederation,
    services: &[OutboundService],
    spec: &str,
) -> Result<TcpForward> {
    let usage = || {
        format!("--tcp {spec:?}: expected SERVICE:PORT=LISTEN, e.g. db.data:5432=127.0.0.1:15432")
    };
    let (target, listen) = spec.split_once('=').with_context(usage)?;
    let (name, port) = target.rsplit_once(':').with_context(usage)?;
    let port: u16 = port.parse().ok().with_context(usage)?;
    let listen: SocketAddr = listen.parse().ok().with_context(usage)?;
    let svc = mesh
        .catalog
        .iter()
        .find(|s| {
            let short = format!("{}.{}", s.key.name, s.key.namespace);
            name == short
                || mesh
                    .catalog
                    .hostname_of(&s.key)
                    .is_ok_and(|h| h.as_str() == name)
        })
        .with_context(|| format!("--tcp {spec:?}: no service {name:?} in mesh {}", mesh.mesh))?;
    let p = svc
        .ports
        .iter()
        .find(|p| p.port == port)
        .with_context(|| format!("--tcp {spec:?}: service {} has no port {port}", svc.key))?;
    if !matches!(p.protocol, Protocol::Tcp | Protocol::Tls) {
        bail!(
            "--tcp {spec:?}: port {port} of {} is {}, not TCP or TLS",
            svc.key,
            p.protocol
        );
    }
    let host = mesh.catalog.hostname_of(&svc.key)?;
    let endpoints = services
        .iter()
        .find(|s| s.host == host)
        .map(|s| s.endpoints.clone())
        .unwrap_or_default();
    Ok(TcpForward {
        listen,
        host,
        port,
        endpoints,
    })
}

/// The names a workload of `service` answers to: the service's hostname and every name it is
/// exported under to a peer.
fn served_names(
    mesh: &MeshFederation,
    service: &meshfed_core::ServiceKey,
    exported: &[meshfed_core::Hostname],
) -> Result<Vec<meshfed_core::Hostname>> {
    let mut names = vec![mesh.catalog.hostname_of(service)?];
    names.extend(mesh.exported_names_of(service));
    names.extend(exported.iter().cloned());
    names.sort();
    names.dedup();
    Ok(names)
}

fn http_version(svc: &meshfed_core::catalog::Service) -> HttpVersion {
    if svc.speaks_http2() {
        HttpVersion::Http2
    } else {
        HttpVersion::Http1
    }
}

/// What federation adds to a sidecar's configuration.
#[derive(Debug, Default)]
struct Federated {
    /// Services imported from peers.
    imports: Vec<ImportedRoute>,
    /// Names peers reach the workload's service by (from the control plane; in file mode the
    /// mesh file's own exports give them).
    exported: Vec<meshfed_core::Hostname>,
    /// Workloads (namespace, name) that are not ready: chosen only when nothing else is.
    unready: BTreeSet<(String, String)>,
}

/// The sidecar configuration of the chosen workload in `mesh` (with what federation adds),
/// and its identity.
fn configure(
    mesh: &MeshFederation,
    fed: &Federated,
    args: &ProxyArgs,
    allow: &BTreeSet<TrustDomain>,
) -> Result<(SidecarConfig, SpiffeId)> {
    let matches: Vec<_> = mesh
        .catalog
        .workloads()
        .filter(|w| {
            w.name == args.workload
                && args
                    .namespace
                    .as_deref()
                    .is_none_or(|n| w.namespace.as_str() == n)
        })
        .collect();
    let w = match matches.as_slice() {
        [w] => *w,
        [] => {
            let known: Vec<String> = mesh
                .catalog
                .workloads()
                .map(|w| format!("{}/{}", w.namespace, w.name))
                .collect();
            bail!(
                "no workload {:?} in mesh {}; workloads: {}",
                args.workload,
                mesh.mesh,
                known.join(", ")
            );
        }
        _ => bail!(
            "workload {:?} exists in several namespaces; pass --namespace",
            args.workload
        ),
    };
    let identity = |ns: &meshfed_core::Namespace, sa: &str| {
        SpiffeId::for_service_account(&mesh.trust_domain, ns, sa)
    };
    // Locality priorities are the calling workload's.
    let here = w.locality.as_ref();
    let local_priority = |at: Option<&meshfed_core::locality::Locality>| match (at, here) {
        (Some(at), Some(here)) => at.priority_from(here),
        _ => 0,
    };
    let mut services = Vec::new();
    for svc in mesh.catalog.iter() {
        let mut endpoints = mesh
            .catalog
            .endpoints_of(&svc.key)
            .map(|e| {
                Ok(Endpoint {
                    addr: e.inbound,
                    identity: identity(&e.namespace, &e.service_account)?,
                    labels: e.labels.clone(),
                    sni: None,
                    priority: local_priority(e.locality.as_ref()),
                    healthy: !fed
                        .unready
                        .contains(&(e.namespace.to_string(), e.name.clone())),
                })
            })
            .collect::<Result<Vec<_>, meshfed_core::id::SpiffeIdError>>()?;
        let host = mesh.catalog.hostname_of(&svc.key)?;
        // `importAsLocal`: the peers' endpoints join the local ones, as failover groups.
        endpoints.extend(
            fed.imports
                .iter()
                .filter(|r| r.import_as_local && r.hostname == host)
                .flat_map(|r| remote_endpoints(r, here)),
        );
        services.push(OutboundService {
            host,
            endpoints,
            traffic: mesh.traffic_for(&svc.key),
            protocol: http_version(svc),
        });
    }
    services.extend(imported_services(mesh, &fed.imports, here));
    let tcp = args
        .tcp
        .iter()
        .map(|spec| tcp_forward(mesh, &services, spec))
        .collect::<Result<Vec<_>>>()?;
    let tcp_ports = mesh
        .catalog
        .get(&w.service)
        .map(|s| {
            s.ports
                .iter()
                .filter(|p| matches!(p.protocol, Protocol::Tcp | Protocol::Tls))
                .map(|p| p.port)
                .collect()
        })
        .unwrap_or_default();
    let id = identity(&w.namespace, &w.service_account)?;
    let cfg = SidecarConfig {
        outbound: args.outbound,
        inbound: Some(w.inbound),
        app: Some(w.app),
        app_protocol: mesh
            .catalog
            .get(&w.service)
            .map_or(HttpVersion::Http1, http_version),
        allow: Expect::TrustDomains(allow.clone()),
        services,
        policies: mesh.policies_for(&w.service),
        service: w.service.to_string(),
        admin: args.admin,
        tcp,
        tcp_ports,
        names: served_names(mesh, &w.service, &fed.exported)?,
    };
    Ok((cfg, id))
}

/// The imports of a mesh run from files: what the `--peer-mesh` files export to `mesh`, mapped
/// by its `ImportedServiceSet`s, each through the egress gateway the mesh declares for that
/// peer (or `--egress`).
fn file_imports(mesh: &MeshFederation, args: &ProxyArgs) -> Result<Vec<ImportedRoute>> {
    if args.peer_mesh.is_empty() {
        return Ok(Vec::new());
    }
    let peers = args
        .peer_mesh
        .iter()
        .map(|p| crate::node::load_mesh(p))
        .collect::<Result<Vec<_>>>()?;
    let plan = meshfed_core::federation::explain(mesh, &peers, None).imports;
    let (routes, missing) = meshfed_core::import::routes_from_plan(
        &plan,
        |peer| {
            args.egress
                .or_else(|| mesh.peers.get(peer).and_then(|p| mesh.egress_address(p)))
        },
        |_, _| None,
    );
    if let Some((host, peer)) = missing.first() {
        bail!(
            "{host} is imported from {peer}, but mesh {} declares no egress gateway for that peer: add it under spec.gateways or pass --egress",
            mesh.mesh
        );
    }
    Ok(routes)
}

/// Priority of a peer's endpoints for a caller at `here`: by the import's locality, and after
/// every local priority when it has none.
const REMOTE_WITHOUT_LOCALITY: u8 = 4;

/// The endpoints of one imported route: one per advertised identity, at this mesh's egress
/// gateway for the peer, with the peer's exported name as the server name; unhealthy when the
/// peer reports no healthy endpoints behind it.
fn remote_endpoints(
    r: &ImportedRoute,
    here: Option<&meshfed_core::locality::Locality>,
) -> Vec<Endpoint> {
    let priority = match (&r.locality, here) {
        (Some(at), Some(here)) => at.priority_from(here),
        (Some(_), None) => 0,
        (None, _) => REMOTE_WITHOUT_LOCALITY,
    };
    let healthy = r.health.is_none_or(|(up, _)| up > 0);
    r.identities
        .iter()
        .map(|id| Endpoint {
            addr: r.egress,
            identity: id.clone(),
            labels: std::collections::BTreeMap::new(),
            sni: Some(r.exported_name.clone()),
            priority,
            healthy,
        })
        .collect()
}

/// Outbound services for imports under names of their own (not merged into a local service):
/// each imported hostname with its peers' endpoints.
fn imported_services(
    mesh: &MeshFederation,
    imports: &[ImportedRoute],
    here: Option<&meshfed_core::locality::Locality>,
) -> Vec<OutboundService> {
    let mut by_host: std::collections::BTreeMap<&meshfed_core::Hostname, Vec<&ImportedRoute>> =
        std::collections::BTreeMap::new();
    for r in imports {
        by_host.entry(&r.hostname).or_default().push(r);
    }
    by_host
        .into_iter()
        .filter(|(host, _)| mesh.catalog.by_hostname(host).is_none())
        .map(|(host, routes)| OutboundService {
            host: host.clone(),
            endpoints: routes
                .iter()
                .flat_map(|r| remote_endpoints(r, here))
                .collect(),
            traffic: TrafficPolicy::default(),
            protocol: if routes.iter().all(|r| r.http2) {
                HttpVersion::Http2
            } else {
                HttpVersion::Http1
            },
        })
        .collect()
}

/// Re-reads the mesh file when it changes and applies it; a file that does not load keeps
/// the running configuration, with the reason printed.
async fn reload(
    running: &sidecar::Running,
    args: &ProxyArgs,
    path: &PathBuf,
    allow: &BTreeSet<TrustDomain>,
    id: &SpiffeId,
) {
    let read = || std::fs::read(path).ok();
    let mut last = read();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = read();
        if now == last {
            continue;
        }
        last = now;
        let applied = crate::node::load_mesh(path)
            .and_then(|mesh| {
                let fed = Federated {
                    imports: file_imports(&mesh, args)?,
                    ..Federated::default()
                };
                configure(&mesh, &fed, args, allow)
            })
            .and_then(|(cfg, new_id)| {
                if &new_id != id {
                    bail!("the workload's identity changed to {new_id}; restart the sidecar");
                }
                running.update(&cfg)?;
                Ok(())
            });
        match applied {
            Ok(()) => tracing::info!("applied the new {}", path.display()),
            Err(e) => tracing::warn!("keeping the previous configuration: {e:#}"),
        }
    }
}

async fn run_async(args: ProxyArgs) -> Result<ExitCode> {
    match (&args.bootstrap, &args.mesh) {
        (Some(b), _) => run_joined(&args, b).await,
        (None, Some(m)) => run_file(&args, m).await,
        (None, None) => bail!("pass --bootstrap FILE (join the control plane) or --mesh FILE"),
    }
}

async fn run_file(args: &ProxyArgs, path: &PathBuf) -> Result<ExitCode> {
    let mesh = crate::node::load_mesh(path)?;
    let (ca, held) = crate::node::load_ca_for(&args.dir.dir, &mesh)?;
    let allow: BTreeSet<TrustDomain> = held.domains().cloned().collect();
    let fed = Federated {
        imports: file_imports(&mesh, args)?,
        ..Federated::default()
    };
    let (cfg, id) = configure(&mesh, &fed, args, &allow)?;
    let svid = ca.issue(&id, DEFAULT_SVID_TTL, SystemTime::now())?;
    let resolver = Arc::new(SvidResolver::new(&svid, verify::provider())?);
    let app = cfg.app.map_or("-".into(), |a| a.to_string());
    let running = sidecar::start(cfg, resolver.clone(), verify::shared(held)).await?;
    tracing::info!(
        "sidecar for {} as {id}: inbound mTLS on {}, app {app}{}{}",
        args.workload,
        running.inbound.map_or("-".into(), |a| a.to_string()),
        running
            .outbound
            .map_or(String::new(), |a| format!(", outbound on {a}")),
        running
            .admin
            .map_or(String::new(), |a| format!(", admin on http://{a}")),
    );
    // Renew the SVID at half life.
    let ca_dir = args.dir.dir.clone();
    let renew_id = id.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(DEFAULT_SVID_TTL / 2).await;
            if let Ok(ca) = CertificateAuthority::load(&ca_dir)
                && let Ok(svid) = ca.issue(&renew_id, DEFAULT_SVID_TTL, SystemTime::now())
            {
                let _ = resolver.set(&svid);
            }
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        () = reload(&running, args, path, &allow, &id) => {}
    }
    drop(running);
    Ok(ExitCode::SUCCESS)
}

/// Joins the control plane: a first certificate with the bootstrap token, then the config
/// stream. The listeners start with the first good snapshot; later ones are applied live.
async fn run_joined(args: &ProxyArgs, path: &std::path::Path) -> Result<ExitCode> {
    let boot = Bootstrap::read(path)?;
    let Some(namespace) = args.namespace.as_deref() else {
        bail!("--namespace is required with --bootstrap");
    };
    let cp = boot.control_plane;
    // The app's readiness goes to the control plane on the config stream.
    let (ready_tx, ready_rx) = watch::channel(meshfed_api::config::Report::default());
    let client = Client::new(boot, namespace, &args.workload)?.with_reports(ready_rx);
    let svid = certify_first(&client, cp).await?;
    let id = svid.id.clone();
    let resolver = Arc::new(SvidResolver::new(&svid, verify::provider())?);
    tracing::info!("certified as {id} by {cp}");
    let renew = tokio::spawn({
        let (client, resolver) = (client.clone(), resolver.clone());
        async move { client.renew_forever(resolver, svid).await }
    });
    let (updates, mut rx) = mpsc::channel::<Update>(1);
    let (state, _) = watch::channel(ClientState::default());
    let subscription = tokio::spawn({
        let (client, resolver) = (client.clone(), resolver.clone());
        async move { client.subscribe(resolver, updates, state).await }
    });
    let mut running: Option<sidecar::Running> = None;
    let mut readiness: Option<tokio::task::JoinHandle<()>> = None;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Set once a signal asks us to stop: serve until then.
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        let drained = async {
            match drain_until {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let signalled = tokio::select! {
            _ = tokio::signal::ctrl_c() => true,
            _ = term.recv() => true,
            () = drained => break,
            u = rx.recv() => match u {
                Some(u) => {
                    let r = apply(args, &client, &resolver, &id, &mut running, u.received).await;
                    match &r {
                        Ok((version, _)) => tracing::info!("applied config version {version}"),
                        Err(e) => tracing::warn!("keeping the previous configuration: {e:#}"),
                    }
                    if let Ok((_, Some(app))) = &r
                        && readiness.is_none()
                        && drain_until.is_none()
                    {
                        readiness = Some(tokio::spawn(report_readiness(*app, ready_tx.clone())));
                    }
                    let _ = u.done.send(r.map(|_| ()).map_err(|e| SnapshotRefused::apply_failed(format!("{e:#}"))));
                    false
                }
                None => break,
            },
        };
        if !signalled {
            continue;
        }
        if drain_until.is_some() || args.drain.is_zero() {
            break;
        }
        // Draining: not ready from now on, serving what still comes for the drain time.
        if let Some(r) = readiness.take() {
            r.abort();
        }
        ready_tx.send_modify(|r| {
            r.workload = Some(meshfed_api::config::WorkloadReadiness { ready: false });
        });
        tracing::info!(
            "draining: reported not ready; serving for {:?} more",
            args.drain
        );
        drain_until = Some(tokio::time::Instant::now() + args.drain);
    }
    renew.abort();
    subscription.abort();
    if let Some(r) = readiness {
        r.abort();
    }
    drop(running);
    Ok(ExitCode::SUCCESS)
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

/// The first certificate from the control plane at `cp`, retried with backoff while it is
/// unreachable (it may still be starting).
pub(crate) async fn certify_first(client: &Client, cp: SocketAddr) -> Result<meshfed_trust::Svid> {
    let mut wait = Duration::from_millis(200);
    loop {
        match client.certify(None).await {
            Ok(s) => return Ok(s),
            Err(e) if e.reason == "ControlPlaneUnreachable" => {
                tracing::info!("waiting for the control plane at {cp}: {e}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(e) => bail!("the control plane at {cp} refused a certificate: {e}"),
        }
    }
}

/// Applies one validated snapshot: starts the sidecar on the first, updates it after. The
/// version applied, and the app's address.
async fn apply(
    args: &ProxyArgs,
    client: &Client,
    resolver: &Arc<SvidResolver>,
    id: &SpiffeId,
    running: &mut Option<sidecar::Running>,
    received: meshfed_control::client::Received,
) -> Result<(u64, Option<SocketAddr>)> {
    let allow: BTreeSet<TrustDomain> = received.bundles.domains().cloned().collect();
    let fed = Federated {
        imports: received.imports,
        exported: received.exported_names,
        unready: received.unready,
    };
    let (cfg, want) = configure(&received.mesh.mesh, &fed, args, &allow)?;
    let app = cfg.app;
    if &want != id {
        bail!("the workload's identity changed to {want}; restart the sidecar");
    }
    let bundles = client.bundles();
    match running {
        Some(r) => {
            // New bundles first, so a newly allowed domain is verifiable at once; put the
            // old ones back if the update is refused.
            let previous = bundles.swap(Arc::new(received.bundles));
            if let Err(e) = r.update(&cfg) {
                bundles.store(previous);
                return Err(e.into());
            }
        }
        None => {
            let previous = bundles.swap(Arc::new(received.bundles));
            match sidecar::start(cfg, resolver.clone(), bundles.clone()).await {
                Ok(r) => {
                    tracing::info!(
                        "sidecar for {} as {id}: inbound mTLS on {}{}{}",
                        args.workload,
                        r.inbound.map_or("-".into(), |a| a.to_string()),
                        r.outbound
                            .map_or(String::new(), |a| format!(", outbound on {a}")),
                        r.admin
                            .map_or(String::new(), |a| format!(", admin on http://{a}")),
                    );
                    *running = Some(r);
                }
                Err(e) => {
                    bundles.store(previous);
                    return Err(e.into());
                }
            }
        }
    }
    Ok((received.version, app))
}
