//! `meshfed control`: the mesh's control plane in embedded mode — the mesh file as the config
//! source, the mesh CA for workload certificates, the config stream to proxies.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Args;
use meshfed_control::imports::{PeerFeed, serve_with_imports};
use meshfed_control::rotation::{self, MeshCa};
use meshfed_control::server::{self, ControlPlane, ControlStatus};
use meshfed_control::source::{self, Trust, TrustFn};
use meshfed_control::{Log, control_plane_id};
use meshfed_peering::{admin, tls};
use meshfed_trust::bootstrap::{self, Bootstrap};
use meshfed_trust::ca::{CertificateAuthority, DEFAULT_SVID_TTL};
use meshfed_trust::verify::{self, SvidResolver};
use tokio::sync::watch;

use crate::note;
use crate::trust::{DirArg, parse_duration};

#[derive(Args, Debug)]
pub struct ControlArgs {
    /// The mesh file: services, workloads, traffic and authorization policies. Re-read when
    /// it changes; a file with errors is refused whole and the previous version stays served.
    #[arg(long, required_unless_present = "kube", conflicts_with = "kube")]
    mesh: Option<PathBuf>,
    /// Kubernetes mode: the cluster is the config source — Services, EndpointSlices, injected
    /// Pods and Nodes cluster-wide, the federation CRDs in --namespace — and CRD status is
    /// written by server-side apply. The client comes from KUBECONFIG or the pod's service
    /// account.
    #[arg(long)]
    kube: bool,
    /// With --kube: the control-plane namespace (default: $POD_NAMESPACE, else
    /// meshfed-system).
    #[arg(long, requires = "kube")]
    namespace: Option<String>,
    /// With --kube: the mesh's name (default: the namespace without `-system`).
    #[arg(long, requires = "kube")]
    mesh_name: Option<String>,
    /// With --kube: the cluster's DNS domain.
    #[arg(long, requires = "kube")]
    cluster_domain: Option<String>,
    #[command(flatten)]
    dir: DirArg,
    /// The config and certificate endpoint (mTLS).
    #[arg(long, default_value = "127.0.0.1:15012")]
    listen: SocketAddr,
    /// The address proxies reach the config endpoint at, `HOST:PORT` (written into the
    /// bootstrap file); default the --listen address. In Kubernetes, the control plane's
    /// Service, e.g. `meshfed-control.meshfed-system.svc:15012`.
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Loopback admin endpoint: GET /status (JSON), GET /healthz.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Where to write the bootstrap file proxies join with (address, identity, bundle and the
    /// join secret; mode 0600). Default: `bootstrap.json` in the CA directory.
    #[arg(long)]
    bootstrap_out: Option<PathBuf>,
    /// Lifetime of workload certificates, e.g. `24h`.
    #[arg(long, value_parser = parse_duration, default_value = "24h")]
    svid_ttl: Duration,
    /// Run the mesh's peering here too (what `meshfed peering run` does: serve each peer its
    /// exports, import from every peer): imports reach the proxies in their snapshots, routed
    /// through the egress gateways `spec.gateways` declares. Peers reach it through the
    /// ingress gateway's discovery port.
    #[arg(long)]
    peering: Option<SocketAddr>,
    /// With --peering: the directory of persisted imports (a rebuildable cache).
    #[arg(long, requires = "peering")]
    store: Option<PathBuf>,
    /// With --peering: heartbeat interval.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// With --peering: silence after which a peer is Failing.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    liveness: Duration,
    /// After `meshfed trust rotate` adds a root, how long the control plane serves it (to its
    /// proxies and, with --peering, to its peers) before signing with it; proxies then renew.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    rotation_grace: Duration,
}

impl ControlArgs {
    pub(crate) fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }

    pub(crate) fn mesh_name(&self) -> Option<&str> {
        self.mesh_name.as_deref()
    }

    pub(crate) fn cluster_domain(&self) -> Option<&str> {
        self.cluster_domain.as_deref()
    }
}

pub fn run(args: ControlArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: ControlArgs) -> Result<ExitCode> {
    let dir = args.dir.dir.clone();
    let mesh_ca = MeshCa::new(
        CertificateAuthority::load(&dir)
            .with_context(|| format!("loading the CA in {}", dir.display()))?,
    )?;
    let td = mesh_ca.trusted().trust_domain().clone();
    let kube = match &args.mesh {
        Some(_) => None,
        None => Some(crate::kubernetes::start(&args, &td).await?),
    };
    // In Kubernetes mode, peers' roots also come from the ConfigMaps their ServiceMeshPeers
    // name (Maistra's certificateChain).
    let rendered = kube.as_ref().map(|(s, _)| s.rendered.subscribe());
    let trust: TrustFn = {
        let (dir, mesh_ca, rendered) = (dir.clone(), mesh_ca.clone(), rendered.clone());
        Arc::new(move || {
            let mut set = meshfed_trust::dir::load_bundles(&dir, &mesh_ca.trusted())
                .map_err(|e| e.to_string())?;
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
    };
    let first = match (&args.mesh, &kube) {
        (Some(path), _) => source::initial(path, &td, &trust),
        (None, Some((source, _))) => source.initial(&td, &trust),
        (None, None) => Err("--mesh or --kube is required".to_owned()),
    }
    .map_err(anyhow::Error::msg)?;
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
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let listen = listener.local_addr()?;
    // In Kubernetes mode every replica shares one join secret, kept in a Secret, so a restart
    // leaves the bootstrap files valid.
    let token = match &kube {
        None => bootstrap::new_token()?,
        Some((source, client)) => {
            meshfed_k8s::secrets::join_token(client, &source.settings.namespace, || {
                bootstrap::new_token().unwrap_or_default()
            })
            .await
            .map_err(anyhow::Error::msg)?
        }
    };
    let advertised = match &args.advertise {
        Some(a) => crate::node::resolve_host_port(a).await?,
        None => listen,
    };
    let boot = Bootstrap {
        control_plane: advertised,
        control_plane_id: cp_id.clone(),
        trust_domain: td.clone(),
        bundle: mesh_ca.trusted().current_bundle()?.to_json(),
        token: token.clone(),
    };
    let boot_path = args
        .bootstrap_out
        .clone()
        .unwrap_or_else(|| dir.join("bootstrap.json"));
    boot.write(&boot_path)?;
    // The bootstrap file as JSON, for the Secrets Kubernetes mode writes.
    let boot_json = Arc::new(watch::channel(serde_json::to_string(&boot)?).0);

    let log: Log = Arc::new(|line: &str| note(line));
    let status = Arc::new(Mutex::new(ControlStatus::default()));
    let version = first.version;
    // The peering node, if asked for: its importers feed the served snapshots.
    let node = match args.peering {
        None => None,
        Some(listen) => {
            let (_, mut held) = crate::node::load_ca_for(&dir, &first.mesh)?;
            if let Some(r) = &rendered {
                meshfed_k8s::render::add_peer_trust(&mut held, &r.borrow());
            }
            crate::node::warn_missing_bundles(&first.mesh, &held);
            let held = verify::shared(held);
            // ConfigMap roots that appear later are trusted by the peering streams too.
            if let Some(mut r) = rendered.clone() {
                let held = held.clone();
                tokio::spawn(async move {
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
            let node = crate::node::start_node(
                &first.mesh,
                Arc::new(move |id: &meshfed_core::SpiffeId| {
                    Ok(issuer
                        .signing()
                        .issue(id, DEFAULT_SVID_TTL, SystemTime::now())?)
                }),
                held,
                crate::node::NodeOptions {
                    listen,
                    store: args.store.clone(),
                    heartbeat: args.heartbeat,
                    liveness: args.liveness,
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
                },
            )
            .await?;
            note(&format!("peering on {}", node.listen));
            Some(node)
        }
    };
    let feeds = node
        .as_ref()
        .map_or_else(|| watch::channel(Vec::<PeerFeed>::new()).1, |n| n.feeds());
    let (src_tx, src_rx) = watch::channel(Arc::new(first.clone()));
    // A changed mesh file, or a workload's readiness, changes what peering exports too.
    let node = node.map(Arc::new);
    let on_mesh = node.clone().map(|n| -> meshfed_control::imports::OnMesh {
        Arc::new(move |mesh, health| n.set_exports(mesh, health))
    });
    // The peers follow the mesh: a ServiceMeshPeer added or removed (in the file or the
    // cluster) starts or stops its importer without a restart.
    if let Some(n) = node.clone() {
        let mut rx = src_rx.clone();
        tokio::spawn(async move {
            loop {
                let mesh = rx.borrow_and_update().mesh.clone();
                if let Err(e) = n.sync_peers(&mesh).await {
                    note(&format!("following the mesh's peers: {e:#}"));
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    let (tx, rx) = watch::channel(Arc::new(first));
    let source_name = match (&args.mesh, kube) {
        (Some(path), _) => {
            tokio::spawn(source::watch_file(
                path.clone(),
                td.clone(),
                trust,
                src_tx,
                status.clone(),
                Duration::from_millis(500),
                log.clone(),
            ));
            path.display().to_string()
        }
        (None, Some((source, client))) => {
            // Every replica serves proxies; the Lease holder writes status, Events and the
            // bootstrap Secrets.
            let identity = std::env::var("POD_NAME")
                .unwrap_or_else(|_| format!("meshfed-control-{}", std::process::id()));
            let leader = meshfed_k8s::lease::start(
                &client,
                &source.settings.namespace,
                meshfed_k8s::lease::Election::new(&identity),
                log.clone(),
            );
            let cleanup: meshfed_k8s::finalizer::Cleanup = {
                let node = node.clone();
                Arc::new(move |peer: String| {
                    let node = node.clone();
                    Box::pin(async move {
                        match &node {
                            Some(n) => n.forget_peer(&peer).await.map_err(|e| format!("{e:#}")),
                            None => Ok(()),
                        }
                    })
                })
            };
            tokio::spawn(meshfed_k8s::finalizer::run(
                client.clone(),
                source.settings.namespace.clone(),
                source.rendered.subscribe(),
                leader.clone(),
                cleanup,
                log.clone(),
            ));
            tokio::spawn(source.bootstrap_writer(
                client.clone(),
                boot_json.subscribe(),
                leader.clone(),
                log.clone(),
            ));
            let peering = node
                .as_ref()
                .map(|n| -> meshfed_k8s::status::PeeringStatus {
                    let status = n.status.clone();
                    Arc::new(move || serde_json::from_str(&status()).unwrap_or_default())
                });
            tokio::spawn(meshfed_k8s::status::run(
                client,
                source.settings.namespace.clone(),
                source.rendered.subscribe(),
                peering,
                leader,
                identity,
                Duration::from_secs(2),
                log.clone(),
            ));
            let name = format!("the cluster (namespace {})", source.settings.namespace);
            tokio::spawn(source.run(
                td.clone(),
                trust,
                src_tx,
                status.clone(),
                Duration::from_millis(500),
                log.clone(),
            ));
            name
        }
        (None, None) => bail!("--mesh or --kube is required"),
    };

    let cp = ControlPlane::new(rx, mesh_ca.clone(), &token, status.clone(), log.clone())
        .with_svid_ttl(args.svid_ttl);
    tokio::spawn(serve_with_imports(
        src_rx,
        feeds,
        cp.readiness(),
        on_mesh,
        tx,
        status.clone(),
        log.clone(),
    ));
    let (fail_tx, mut fail_rx) = tokio::sync::mpsc::unbounded_channel();
    let incoming = tls::incoming(listener, server_tls, fail_tx);
    tokio::spawn(async move {
        while let Some(f) = fail_rx.recv().await {
            note(&format!(
                "refused a connection from {}: {}",
                f.remote, f.reason
            ));
        }
    });
    let server = tokio::spawn(cp.serve(incoming, std::future::pending()));
    // Renew our own SVID at half life, and at once when the signing root changes; follow
    // the CA folder (`meshfed trust rotate`).
    let renew_own = {
        let (mesh_ca, resolver, cp_id) = (mesh_ca.clone(), resolver.clone(), cp_id.clone());
        move || {
            if let Ok(s) = mesh_ca
                .signing()
                .issue(&cp_id, DEFAULT_SVID_TTL, SystemTime::now())
            {
                let _ = resolver.set(&s);
            }
        }
    };
    {
        let renew_own = renew_own.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(DEFAULT_SVID_TTL / 2).await;
                renew_own();
            }
        });
    }
    tokio::spawn(rotation::watch_dir(
        mesh_ca.clone(),
        dir.clone(),
        args.rotation_grace,
        Duration::from_millis(500),
        log.clone(),
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
                            note(&format!("rewriting {} failed: {e}", boot_path.display()));
                        }
                        boot_json.send_replace(serde_json::to_string(&boot).unwrap_or_default());
                        if let Some(n) = &node {
                            n.set_bundle(bundle);
                        }
                    }
                    rotation::Event::Signing => {
                        renew_own();
                        if let Some(n) = &node
                            && let Err(e) = n.reissue(&mesh_ca.signing())
                        {
                            note(&format!("reissuing the peering certificates failed: {e:#}"));
                        }
                    }
                }
                true
            }
        },
    ));
    let _admin = match args.admin {
        Some(addr) => {
            let st = status.clone();
            let peering = node.as_ref().map(|n| n.status.clone());
            let f: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || {
                let s = st
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                let mut v = serde_json::to_value(&s).unwrap_or_default();
                if let Some(p) = &peering {
                    v["peering"] = serde_json::from_str(&p()).unwrap_or_default();
                }
                serde_json::to_string_pretty(&v).unwrap_or_default()
            });
            let (bound, task) = admin::serve(addr, f).await?;
            note(&format!("admin on http://{bound}/status"));
            Some(task)
        }
        None => None,
    };
    note(&format!(
        "control plane for {source_name} ({td}) on {listen}, serving version {version}; proxies join with {}",
        boot_path.display()
    ));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        r = server => match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("the config server stopped: {e}"),
            Err(e) => bail!("the config server stopped: {e}"),
        },
    }
    if let Some(n) = node {
        n.stop().await;
    }
    Ok(ExitCode::SUCCESS)
}
