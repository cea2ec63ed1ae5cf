//! `meshfed proxy`: one workload's sidecar in local-file mode — routes and identities come
//! from the mesh file, the SVID from the mesh CA (the control-plane stream comes later).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Args;
use meshfed_core::federation::MeshFederation;
use meshfed_core::{SpiffeId, TrustDomain};
use meshfed_proxy::sidecar::{self, Endpoint, OutboundService, SidecarConfig};
use meshfed_trust::ca::{CertificateAuthority, DEFAULT_SVID_TTL};
use meshfed_trust::verify::{self, Expect, SvidResolver};

use crate::note;
use crate::trust::DirArg;

#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// The mesh file (its `workloads` give routes and addresses).
    #[arg(long)]
    mesh: PathBuf,
    /// The workload this sidecar serves.
    #[arg(long)]
    workload: String,
    /// The workload's namespace, if its name is not unique.
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
}

pub fn run(args: ProxyArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

/// The sidecar configuration of the chosen workload in `mesh`, and its identity.
fn configure(
    mesh: &MeshFederation,
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
                "no workload {:?} in {}; workloads: {}",
                args.workload,
                args.mesh.display(),
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
    let mut services = Vec::new();
    for svc in mesh.catalog.iter() {
        let endpoints = mesh
            .catalog
            .endpoints_of(&svc.key)
            .map(|e| {
                Ok(Endpoint {
                    addr: e.inbound,
                    identity: identity(&e.namespace, &e.service_account)?,
                })
            })
            .collect::<Result<Vec<_>, meshfed_core::id::SpiffeIdError>>()?;
        services.push(OutboundService {
            host: mesh.catalog.hostname_of(&svc.key)?,
            endpoints,
            traffic: mesh.traffic_for(&svc.key),
        });
    }
    let id = identity(&w.namespace, &w.service_account)?;
    let cfg = SidecarConfig {
        outbound: args.outbound,
        inbound: Some(w.inbound),
        app: Some(w.app),
        allow: Expect::TrustDomains(allow.clone()),
        services,
        policies: mesh.policies_for(&w.service),
        service: w.service.to_string(),
        admin: args.admin,
    };
    Ok((cfg, id))
}

/// Re-reads the mesh file when it changes and applies it; a file that does not load keeps
/// the running configuration, with the reason printed.
async fn reload(
    running: &sidecar::Running,
    args: &ProxyArgs,
    allow: &BTreeSet<TrustDomain>,
    id: &SpiffeId,
) {
    let read = || std::fs::read(&args.mesh).ok();
    let mut last = read();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = read();
        if now == last {
            continue;
        }
        last = now;
        let applied = crate::node::load_mesh(&args.mesh)
            .and_then(|mesh| configure(&mesh, args, allow))
            .and_then(|(cfg, new_id)| {
                if &new_id != id {
                    bail!("the workload's identity changed to {new_id}; restart the sidecar");
                }
                running.update(&cfg)?;
                Ok(())
            });
        match applied {
            Ok(()) => note(&format!("applied the new {}", args.mesh.display())),
            Err(e) => note(&format!("keeping the previous configuration: {e:#}")),
        }
    }
}

async fn run_async(args: ProxyArgs) -> Result<ExitCode> {
    let mesh = crate::node::load_mesh(&args.mesh)?;
    let ca = CertificateAuthority::load(&args.dir.dir)
        .with_context(|| format!("loading the CA in {}", args.dir.dir.display()))?;
    if ca.trust_domain() != &mesh.trust_domain {
        bail!(
            "the CA in {} is for {}, the mesh is {}",
            args.dir.dir.display(),
            ca.trust_domain(),
            mesh.trust_domain
        );
    }
    let held = meshfed_trust::dir::load_bundles(&args.dir.dir, &ca)?;
    let allow: BTreeSet<TrustDomain> = held.domains().cloned().collect();
    let (cfg, id) = configure(&mesh, &args, &allow)?;
    let svid = ca.issue(&id, DEFAULT_SVID_TTL, SystemTime::now())?;
    let resolver = Arc::new(SvidResolver::new(&svid, verify::provider())?);
    let app = cfg.app.map_or("-".into(), |a| a.to_string());
    let running = sidecar::start(cfg, resolver.clone(), verify::shared(held)).await?;
    note(&format!(
        "sidecar for {} as {id}: inbound mTLS on {}, app {app}{}{}",
        args.workload,
        running.inbound.map_or("-".into(), |a| a.to_string()),
        running
            .outbound
            .map_or(String::new(), |a| format!(", outbound on {a}")),
        running
            .admin
            .map_or(String::new(), |a| format!(", admin on http://{a}")),
    ));
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
        () = reload(&running, &args, &allow, &id) => {}
    }
    drop(running);
    Ok(ExitCode::SUCCESS)
}
